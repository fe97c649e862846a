//! The local profile's sign-in for the pages: authorization codes handed out by the development
//! issuer and exchanged once for a token when the PKCE verifier matches (RFC 7636, S256). No
//! HTTP here; `rest::app` serves the endpoints. In production the sponsor's identity provider
//! does this and no `DevSignIn` exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::Digest;
use trialbridge_auth::{DevIssuer, TokenRequest};

/// How long a code may wait for its exchange.
const CODE_LIFETIME: Duration = Duration::from_secs(120);

/// The development key and the codes handed out and not yet exchanged.
pub struct DevSignIn {
    issuer: DevIssuer,
    origin: String,
    /// Other origins whose pages sign in here (the site gateway's console under `trialbridge
    /// serve`).
    page_origins: Mutex<Vec<String>>,
    codes: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    challenge: String,
    redirect_uri: String,
    client_id: String,
    request: TokenRequest,
    issued: Instant,
}

/// A token handed out.
pub struct Issued {
    /// The signed token.
    pub token: String,
    /// Its lifetime in seconds.
    pub lifetime_seconds: i64,
    /// Its scopes.
    pub scope: String,
}

impl DevSignIn {
    /// Sign-in with the development key in `dir` for pages served at `base_url`'s origin.
    pub fn open(
        dir: &std::path::Path,
        issuer: &str,
        audience: &str,
        base_url: &str,
    ) -> std::io::Result<Arc<Self>> {
        let dev = DevIssuer::load_or_create(dir, issuer, audience)?;
        let origin = base_url
            .strip_suffix("/fhir")
            .unwrap_or(base_url)
            .to_string();
        Ok(Arc::new(Self {
            issuer: dev,
            origin,
            page_origins: Mutex::default(),
            codes: Mutex::default(),
        }))
    }

    /// The origin of this server's pages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Lets the pages of `origin` (`http://127.0.0.1:2576`) sign in here too.
    pub fn allow_pages_of(&self, origin: &str) {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        let mut o = self.page_origins.lock().unwrap_or_else(|e| e.into_inner());
        if !o.contains(&origin) {
            o.push(origin);
        }
    }

    /// The other origins whose pages sign in here.
    pub fn page_origins(&self) -> Vec<String> {
        self.page_origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the browser may be sent back to `redirect_uri`: a page (`/app/...`) of this
    /// server or of an allowed origin, never elsewhere (the issuer is no open redirector).
    pub fn may_return_to(&self, redirect_uri: &str) -> bool {
        let others = self.page_origins.lock().unwrap_or_else(|e| e.into_inner());
        std::iter::once(&self.origin)
            .chain(others.iter())
            .any(|o| redirect_uri.starts_with(&format!("{o}/app/")))
    }

    /// Hands out a code for `request`, bound to the PKCE challenge, client and redirect.
    pub fn issue_code(
        &self,
        challenge: &str,
        client_id: &str,
        redirect_uri: &str,
        request: TokenRequest,
    ) -> String {
        let code = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        codes.retain(|_, p| p.issued.elapsed() < CODE_LIFETIME);
        codes.insert(
            code.clone(),
            Pending {
                challenge: challenge.to_string(),
                redirect_uri: redirect_uri.to_string(),
                client_id: client_id.to_string(),
                request,
                issued: Instant::now(),
            },
        );
        code
    }

    /// Exchanges a code, once: the verifier must hash to the challenge and the client and
    /// redirect must be the code's. The error is RFC 6749's description.
    pub fn exchange(
        &self,
        code: &str,
        verifier: &str,
        client_id: &str,
        redirect_uri: &str,
    ) -> Result<Issued, &'static str> {
        let pending = self
            .codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(code);
        let Some(p) = pending.filter(|p| p.issued.elapsed() < CODE_LIFETIME) else {
            return Err("the code is unknown, used or expired");
        };
        if pkce_challenge(verifier) != p.challenge {
            return Err("code_verifier does not match the code_challenge");
        }
        if redirect_uri != p.redirect_uri || client_id != p.client_id {
            return Err("redirect_uri or client_id differ from the authorization request");
        }
        Ok(Issued {
            token: self.issuer.mint(&p.request),
            lifetime_seconds: p.request.lifetime_seconds,
            scope: p.request.scope.clone(),
        })
    }
}

/// The S256 challenge of a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_7636_example_verifier_matches_its_challenge() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_code_is_exchanged_once_and_only_with_its_verifier() {
        let dir = tempfile::tempdir().unwrap();
        let s = DevSignIn::open(dir.path(), "iss", "aud", "http://h:1/fhir").unwrap();
        assert_eq!(s.origin(), "http://h:1");
        let req = || TokenRequest {
            subject: "m".into(),
            role: trialbridge_storage::Role::Monitor,
            sites: vec!["mesemcart-site-01".into()],
            scope: "user/*.rs".into(),
            lifetime_seconds: 60,
        };
        let challenge = pkce_challenge("the-verifier");
        let code = s.issue_code(&challenge, "c", "http://h:1/app/monitor", req());
        assert!(s
            .exchange(&code, "another", "c", "http://h:1/app/monitor")
            .is_err());
        // A failed exchange used the code up.
        assert!(s
            .exchange(&code, "the-verifier", "c", "http://h:1/app/monitor")
            .is_err());
        let code = s.issue_code(&challenge, "c", "http://h:1/app/monitor", req());
        assert!(s
            .exchange(&code, "the-verifier", "other", "http://h:1/app/monitor")
            .is_err());
        let code = s.issue_code(&challenge, "c", "http://h:1/app/monitor", req());
        let issued = s
            .exchange(&code, "the-verifier", "c", "http://h:1/app/monitor")
            .unwrap();
        assert_eq!(issued.token.split('.').count(), 3);
        assert!(s
            .exchange(&code, "the-verifier", "c", "http://h:1/app/monitor")
            .is_err());
    }
}
