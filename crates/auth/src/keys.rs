//! Where token keys come from and how they are kept current: the local profile's development
//! key, or a JWKS file or URL that is read again when a token names a key it does not hold
//! (the issuer rotated its keys). The trial store and the site gateway check tokens with the
//! same [`Authenticator`]. Reading the JWKS is this crate's only I/O.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{Principal, Verifier, VerifierSettings};

/// The issuer of the local profile's development tokens.
pub const LOCAL_ISSUER: &str = "urn:trialbridge:local";

/// How a service checks bearer tokens, as flags mirrored by `TRIALBRIDGE_AUTH_*` variables
/// (the trial store and the site gateway take the same ones).
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// JWKS of the token issuer: a file path or an http(s) URL (fetched at start-up).
    #[arg(long, env = "TRIALBRIDGE_AUTH_JWKS", global = true)]
    pub auth_jwks: Option<String>,
    /// The `iss` tokens must carry.
    #[arg(
        long,
        env = "TRIALBRIDGE_AUTH_ISSUER",
        default_value = LOCAL_ISSUER,
        global = true
    )]
    pub auth_issuer: String,
    /// The `aud` tokens must carry.
    #[arg(
        long,
        env = "TRIALBRIDGE_AUTH_AUDIENCE",
        default_value = "trialbridge",
        global = true
    )]
    pub auth_audience: String,
    /// The issuer's token endpoint, published in the CapabilityStatement and
    /// `/.well-known/smart-configuration` for SMART clients.
    #[arg(long, env = "TRIALBRIDGE_AUTH_TOKEN_URL", global = true)]
    pub auth_token_url: Option<String>,
    /// The issuer's authorization endpoint (authorization code + PKCE), published likewise.
    #[arg(long, env = "TRIALBRIDGE_AUTH_AUTHORIZE_URL", global = true)]
    pub auth_authorize_url: Option<String>,
}

impl AuthArgs {
    /// The local profile's defaults (no JWKS: the development key).
    pub fn local() -> Self {
        Self {
            auth_jwks: None,
            auth_issuer: LOCAL_ISSUER.into(),
            auth_audience: "trialbridge".into(),
            auth_token_url: None,
            auth_authorize_url: None,
        }
    }

    /// What a token must say (issuer, audience, 30 s clock skew).
    pub fn settings(&self) -> VerifierSettings {
        VerifierSettings {
            issuer: self.auth_issuer.clone(),
            audience: self.auth_audience.clone(),
            leeway_seconds: 30,
        }
    }
}

/// Where the token keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSource {
    /// The local profile's development key in this directory (created on first start).
    LocalKey(PathBuf),
    /// A JWKS file or URL.
    Jwks(String),
}

/// Reads a JWKS from an http(s) URL or a file.
pub async fn fetch_jwks(src: &str) -> Result<String, String> {
    if src.starts_with("http://") || src.starts_with("https://") {
        let r = reqwest::get(src)
            .await
            .map_err(|e| format!("fetching the JWKS {src}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("fetching the JWKS {src}: HTTP {}", r.status()));
        }
        r.text()
            .await
            .map_err(|e| format!("fetching the JWKS {src}: {e}"))
    } else {
        std::fs::read_to_string(src).map_err(|e| format!("reading the JWKS {src}: {e}"))
    }
}

/// How a service checks bearer tokens: the verifier of the current JWKS, read again from
/// its source when a token names a key it does not hold.
pub struct Authenticator {
    /// The verifier of the current JWKS.
    verifier: std::sync::RwLock<Arc<Verifier>>,
    /// Where the JWKS is read again from when a token names an unknown key.
    rotation: Option<Rotation>,
}

struct Rotation {
    source: String,
    settings: crate::VerifierSettings,
    /// The last time the JWKS was read again; at most one read per [`REREAD_EVERY`].
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often an unknown key may make the store read the JWKS again.
const REREAD_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Authenticator {
    /// A fixed set of keys (the local profile, tests).
    pub fn fixed(verifier: Verifier) -> Self {
        Self {
            verifier: std::sync::RwLock::new(Arc::new(verifier)),
            rotation: None,
        }
    }

    /// No keys at all: every token is refused.
    pub fn none() -> Self {
        Self::fixed(Verifier::empty())
    }

    /// Keys from a JWKS file or URL, read again when a token names a key it does not hold
    /// (the issuer rotated its keys), at most once a minute.
    pub fn rotating(verifier: Verifier, source: String, settings: crate::VerifierSettings) -> Self {
        Self {
            verifier: std::sync::RwLock::new(Arc::new(verifier)),
            rotation: Some(Rotation {
                source,
                settings,
                last: Default::default(),
            }),
        }
    }

    fn current(&self) -> Arc<Verifier> {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Verifies a bearer token.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, crate::AuthError> {
        let result = self.current().verify(token);
        let (Err(crate::AuthError::UnknownKey(_)), Some(r)) = (&result, &self.rotation) else {
            return result;
        };
        {
            let mut last = r.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < REREAD_EVERY) {
                return result;
            }
            *last = Some(std::time::Instant::now());
        }
        match fetch_jwks(&r.source)
            .await
            .and_then(|j| Verifier::from_jwks(&j, r.settings.clone()))
        {
            Ok(v) => {
                tracing::info!(source = %r.source, "the JWKS was read again (a token named a new key)");
                *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
                self.current().verify(token)
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the JWKS again failed");
                result
            }
        }
    }
}

impl Authenticator {
    /// The authenticator of a key source: the JWKS read from its file or URL (read again when
    /// a token names a key it lacks), or the local key's (created when missing).
    pub async fn open(source: &AuthSource, settings: VerifierSettings) -> Result<Self, String> {
        match source {
            AuthSource::LocalKey(dir) => {
                let jwks =
                    crate::DevIssuer::load_or_create(dir, &settings.issuer, &settings.audience)
                        .map_err(|e| {
                            format!("the development signing key in {}: {e}", dir.display())
                        })?
                        .jwks();
                Ok(Self::fixed(Verifier::from_jwks(&jwks, settings)?))
            }
            AuthSource::Jwks(src) => {
                let jwks = fetch_jwks(src).await?;
                let verifier = Verifier::from_jwks(&jwks, settings.clone())?;
                Ok(Self::rotating(verifier, src.clone(), settings))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DevIssuer, TokenRequest, VerifierSettings};
    use serde_json::Value;
    use trialbridge_storage::Role;

    #[tokio::test]
    async fn a_token_of_a_rotated_key_makes_the_service_read_the_jwks_again() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let old = DevIssuer::load_or_create(da.path(), "urn:idp", "trialbridge").unwrap();
        let new = DevIssuer::load_or_create(db.path(), "urn:idp", "trialbridge").unwrap();
        let served = Arc::new(std::sync::Mutex::new(old.jwks()));
        let s2 = served.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let s = s2.clone();
                async move { s.lock().unwrap().clone() }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        let settings = VerifierSettings {
            issuer: "urn:idp".into(),
            audience: "trialbridge".into(),
            leeway_seconds: 30,
        };
        let auth = Authenticator::rotating(
            Verifier::from_jwks(&old.jwks(), settings.clone()).unwrap(),
            url,
            settings,
        );
        let token = new.mint(&TokenRequest {
            subject: "svc".into(),
            role: Role::Warehouse,
            sites: vec![],
            scope: "system/*.rs".into(),
            lifetime_seconds: 60,
        });
        // The issuer publishes the new key next to the old one.
        let mut both: Value = serde_json::from_str(&old.jwks()).unwrap();
        let extra: Value = serde_json::from_str(&new.jwks()).unwrap();
        both["keys"]
            .as_array_mut()
            .unwrap()
            .push(extra["keys"][0].clone());
        *served.lock().unwrap() = both.to_string();
        assert_eq!(auth.verify(&token).await.unwrap().subject, "svc");
        // A key nobody publishes stays unknown.
        let dc = tempfile::tempdir().unwrap();
        let stranger = DevIssuer::load_or_create(dc.path(), "urn:idp", "trialbridge").unwrap();
        let t = stranger.mint(&TokenRequest {
            subject: "x".into(),
            role: Role::Warehouse,
            sites: vec![],
            scope: "system/*.rs".into(),
            lifetime_seconds: 60,
        });
        assert!(matches!(
            auth.verify(&t).await,
            Err(crate::AuthError::UnknownKey(_))
        ));
    }
}
