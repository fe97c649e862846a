//! Bearer token verification against a JWKS.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use std::sync::Arc;

use crate::{parse_role, Principal, Scope};
use trialbridge_storage::Role;

/// Why a token was refused. Every variant is a 401 at the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("the request carries no bearer token (Authorization: Bearer ...)")]
    Missing,
    /// Not a JWT, or a header trialbridge cannot read (including `alg: none`).
    #[error("the bearer token is not a readable JWT: {0}")]
    Malformed(String),
    /// The header names an algorithm other than RS256 or ES256.
    #[error("the token's algorithm {0} is not accepted (RS256 or ES256)")]
    Algorithm(String),
    /// No key of the JWKS matches the token's `kid` and algorithm.
    #[error("no key of the configured JWKS matches the token (kid {0:?})")]
    UnknownKey(Option<String>),
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    Signature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `aud` is not this server.
    #[error("the token's audience (aud) is not this server")]
    Audience,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer (iss) is not the configured one")]
    Issuer,
    /// A claim trialbridge needs is missing or wrong.
    #[error("the token's claims are not usable: {0}")]
    Claims(String),
}

/// What a token must say to be accepted.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// The expected `iss`.
    pub issuer: String,
    /// The expected `aud` (one of the token's audiences).
    pub audience: String,
    /// Allowed clock skew for `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Checks bearer tokens against the keys of one JWKS.
pub struct Verifier {
    keys: Vec<Key>,
    settings: VerifierSettings,
    /// Tokens already verified, until their `exp`: a signature check costs far more than the
    /// request it guards, and a client sends the same token many times.
    verified: std::sync::Mutex<std::collections::HashMap<String, Remembered>>,
}

/// A verified token's caller with its `exp` and `nbf`.
type Remembered = (Arc<Principal>, i64, i64);

/// How many verified tokens are remembered (the cache is emptied when full).
const VERIFIED_CACHE: usize = 10_000;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("settings", &self.settings)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    trialbridge_role: Option<String>,
    #[serde(default)]
    trialbridge_sites: Vec<String>,
}

impl Verifier {
    /// A verifier without keys: every token is refused (for checking settings before the keys
    /// are read).
    pub fn empty() -> Self {
        Self {
            keys: Vec::new(),
            settings: VerifierSettings {
                issuer: String::new(),
                audience: String::new(),
                leeway_seconds: 0,
            },
            verified: Default::default(),
        }
    }

    /// Reads a JWKS document; keys other than RSA and P-256 EC are skipped, and a set without
    /// a usable key is an error.
    pub fn from_jwks(jwks: &str, settings: VerifierSettings) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|e| format!("the JWKS is not readable: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                    if p.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let key =
                DecodingKey::from_jwk(jwk).map_err(|e| format!("a JWKS key is not usable: {e}"))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("the JWKS holds no RS256 or ES256 key".into());
        }
        Ok(Self {
            keys,
            settings,
            verified: Default::default(),
        })
    }

    /// Verifies a token (without the `Bearer ` prefix) and reads the caller from it.
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let leeway = self.settings.leeway_seconds as i64;
        if let Ok(cache) = self.verified.lock() {
            if let Some((p, exp, nbf)) = cache.get(token) {
                let t = now();
                if t < exp + leeway && t >= nbf - leeway {
                    return Ok(p.clone());
                }
            }
        }
        let (principal, exp, nbf) = self.verify_signed(token)?;
        let principal = Arc::new(principal);
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
            cache.insert(token.to_string(), (principal.clone(), exp, nbf));
        }
        Ok(principal)
    }

    /// The full check: header, key, signature, claims.
    fn verify_signed(&self, token: &str) -> Result<(Principal, i64, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Malformed(clip(&e.to_string(), 200)))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            // A kid is the attacker's text: keep the error (which is logged, audited and
            // echoed in WWW-Authenticate) short whatever it holds.
            return Err(AuthError::UnknownKey(header.kid.map(|k| clip(&k, 64))));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.leeway = self.settings.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let mut last = AuthError::Signature;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => {
                    let (exp, nbf) = (data.claims.exp, data.claims.nbf.unwrap_or(i64::MIN / 2));
                    return principal(data.claims).map(|p| (p, exp, nbf));
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => AuthError::Signature,
                        K::ExpiredSignature => AuthError::Expired,
                        K::ImmatureSignature => AuthError::NotYetValid,
                        K::InvalidAudience => AuthError::Audience,
                        K::InvalidIssuer => AuthError::Issuer,
                        K::MissingRequiredClaim(c) => {
                            AuthError::Claims(format!("the claim '{c}' is missing"))
                        }
                        _ => AuthError::Malformed(e.to_string()),
                    };
                    if last != AuthError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

fn principal(c: Claims) -> Result<Principal, AuthError> {
    let role_name = c.trialbridge_role.as_deref().ok_or_else(|| {
        AuthError::Claims(format!("the claim '{}' is missing", crate::ROLE_CLAIM))
    })?;
    let role = parse_role(role_name).ok_or_else(|| {
        AuthError::Claims(format!(
            "'{role_name}' is not a trial role (site, monitor, warehouse, admin, system)"
        ))
    })?;
    let sites_ok = match role {
        Role::Site => c.trialbridge_sites.len() == 1,
        Role::Monitor => !c.trialbridge_sites.is_empty(),
        _ => true,
    };
    if !sites_ok {
        return Err(AuthError::Claims(format!(
            "a {role_name} token names {} in '{}' (a site token exactly one site study, a monitor token at least one)",
            c.trialbridge_sites.len(),
            crate::SITES_CLAIM
        )));
    }
    Ok(Principal::new(
        c.sub,
        c.client_id.or(c.azp),
        role,
        c.trialbridge_sites,
        Scope::parse_all(&c.scope),
    ))
}

/// At most `max` bytes of `text` (on a character boundary), with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
