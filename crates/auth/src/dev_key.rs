//! The local profile's own token issuer: an ES256 key generated once in the data directory,
//! its public half served as the JWKS, and tokens minted for `trialbridge token`.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use trialbridge_storage::Role;

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// The trial role.
    pub role: Role,
    /// Site studies (`site`: one, `monitor`: the assigned ones).
    pub sites: Vec<String>,
    /// Space-separated SMART scopes.
    pub scope: String,
    /// Lifetime in seconds.
    pub lifetime_seconds: i64,
}

/// The local signing key.
pub struct DevIssuer {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    kid: String,
    issuer: String,
    audience: String,
    path: PathBuf,
}

/// The file name of the local signing key inside the data directory.
pub const DEV_KEY_FILE: &str = "dev-signing-key.p8";

impl DevIssuer {
    /// Reads the key from `dir`, generating it (mode 0600) on first use.
    pub fn load_or_create(dir: &Path, issuer: &str, audience: &str) -> std::io::Result<Self> {
        let path = dir.join(DEV_KEY_FILE);
        let pkcs8 = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let doc = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &SystemRandom::new(),
                )
                .map_err(|_| std::io::Error::other("generating the signing key failed"))?;
                write_private(&path, doc.as_ref())?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(e),
        };
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| {
            std::io::Error::other(format!("{} is not a P-256 PKCS#8 key", path.display()))
        })?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = format!("local-{}", &URL_SAFE_NO_PAD.encode(&public[1..13]));
        Ok(Self {
            pkcs8,
            public,
            kid,
            issuer: issuer.into(),
            audience: audience.into(),
            path,
        })
    }

    /// Where the key is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> String {
        // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
        let (x, y) = self.public[1..].split_at(32);
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string()
    }

    /// Signs a token.
    pub fn mint(&self, req: &TokenRequest) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({
            "iss": self.issuer, "aud": self.audience, "sub": req.subject,
            "iat": now, "nbf": now, "exp": now + req.lifetime_seconds,
            "scope": req.scope,
            crate::ROLE_CLAIM: crate::role_name(req.role),
            crate::SITES_CLAIM: req.sites,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        // The key was parsed above, so signing cannot fail.
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .expect("signing with a parsed P-256 key")
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthError, Interaction, Verifier, VerifierSettings};

    fn settings() -> VerifierSettings {
        VerifierSettings {
            issuer: "urn:test".into(),
            audience: "trialbridge".into(),
            leeway_seconds: 30,
        }
    }

    fn request(role: Role, sites: &[&str], scope: &str, lifetime: i64) -> TokenRequest {
        TokenRequest {
            subject: "someone".into(),
            role,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            scope: scope.into(),
            lifetime_seconds: lifetime,
        }
    }

    #[test]
    fn minted_tokens_verify_and_carry_role_sites_and_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::load_or_create(dir.path(), "urn:test", "trialbridge").unwrap();
        let again = DevIssuer::load_or_create(dir.path(), "urn:test", "trialbridge").unwrap();
        assert_eq!(
            issuer.jwks(),
            again.jwks(),
            "the key is kept, not regenerated"
        );
        let v = Verifier::from_jwks(&issuer.jwks(), settings()).unwrap();
        let t = issuer.mint(&request(
            Role::Site,
            &["mesemcart-site-01"],
            "system/Observation.crus",
            60,
        ));
        let p = v.verify(&t).unwrap();
        assert_eq!(p.role, Role::Site);
        assert_eq!(p.sites, vec!["mesemcart-site-01".to_string()]);
        assert!(p.permits("Observation", Interaction::Create));
        assert!(!p.permits("Observation", Interaction::Delete));
        assert!(!p.permits("Patient", Interaction::Read));
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::load_or_create(dir.path(), "urn:test", "trialbridge").unwrap();
        let strict = VerifierSettings {
            leeway_seconds: 0,
            ..settings()
        };
        let v = Verifier::from_jwks(&issuer.jwks(), strict).unwrap();
        let t = issuer.mint(&request(Role::Warehouse, &[], "system/*.rs", 1));
        assert!(v.verify(&t).is_ok());
        assert!(v.verify(&t).is_ok(), "from the cache");
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(v.verify(&t), Err(AuthError::Expired));
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::load_or_create(dir.path(), "urn:test", "trialbridge").unwrap();
        let stranger = DevIssuer::load_or_create(other.path(), "urn:test", "trialbridge").unwrap();
        let v = Verifier::from_jwks(&issuer.jwks(), settings()).unwrap();
        let ok = request(Role::Warehouse, &[], "system/*.rs", 60);
        // Another key with the same kid: the signature fails.
        let forged = {
            let t = stranger.mint(&ok);
            let mut parts: Vec<&str> = t.split('.').collect();
            let good = issuer.mint(&ok);
            let head = good.split('.').next().unwrap().to_string();
            parts[0] = &head;
            parts.join(".")
        };
        assert_eq!(v.verify(&forged), Err(AuthError::Signature));
        assert_eq!(
            v.verify(&issuer.mint(&request(Role::Warehouse, &[], "system/*.rs", -120))),
            Err(AuthError::Expired)
        );
        let wrong_aud = DevIssuer::load_or_create(dir.path(), "urn:test", "elsewhere").unwrap();
        assert_eq!(v.verify(&wrong_aud.mint(&ok)), Err(AuthError::Audience));
        let wrong_iss = DevIssuer::load_or_create(dir.path(), "urn:other", "trialbridge").unwrap();
        assert_eq!(v.verify(&wrong_iss.mint(&ok)), Err(AuthError::Issuer));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            issuer.mint(&ok).split('.').nth(1).unwrap()
        );
        assert!(matches!(v.verify(&none), Err(AuthError::Malformed(_))));
        assert!(matches!(
            v.verify("not-a-jwt"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&issuer.mint(&request(Role::Site, &[], "system/*.rs", 60))),
            Err(AuthError::Claims(_))
        ));
    }
}
