//! Who is calling and what they may do: OAuth2 bearer JWTs checked against a JWKS (RS256 and
//! ES256 only), SMART App Launch v2 scopes, and the trial roles carried in the token.
//!
//! No HTTP and no storage access: the trial store's HTTP edge asks [`Verifier::verify`] for a
//! [`Principal`], turns it into the storage's `AccessContext`, and asks [`Principal::permits`]
//! before every interaction. The local profile signs its own tokens with a [`DevIssuer`].

mod dev_key;
mod keys;
mod policy;
mod scope;
mod verify;

pub use dev_key::{DevIssuer, TokenRequest, DEV_KEY_FILE};
pub use keys::{fetch_jwks, AuthArgs, AuthSource, Authenticator, LOCAL_ISSUER};
pub use policy::{is_clinical_type, is_definitional_type, REASON_REQUIRED_TYPES};
pub use scope::{Interaction, Scope, ScopeContext};
pub use verify::{clip, AuthError, Verifier, VerifierSettings};

use std::sync::Arc;

pub use trialbridge_storage::Role;
use trialbridge_storage::{AccessContext, SiteScope};

/// The name of the token claim that carries the trial role.
pub const ROLE_CLAIM: &str = "trialbridge_role";
/// The name of the token claim that lists the site studies a `site` or `monitor` token covers.
pub const SITES_CLAIM: &str = "trialbridge_sites";

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub` (a person or a client).
    pub subject: String,
    /// The token's `client_id` or `azp`, if any.
    pub client: Option<String>,
    /// The trial role.
    pub role: Role,
    /// The site studies (`mesemcart-site-01`) of a `site` or `monitor` token.
    pub sites: Vec<String>,
    /// The granted SMART scopes that trialbridge understands.
    pub scopes: Vec<Scope>,
    /// The storage context of this caller, built once per token.
    pub context: Arc<AccessContext>,
}

impl Principal {
    /// A caller from verified claims.
    pub fn new(
        subject: String,
        client: Option<String>,
        role: Role,
        sites: Vec<String>,
        scopes: Vec<Scope>,
    ) -> Self {
        // Sites and monitors see shared resources and their own sites' only.
        let visible = match role {
            Role::Site | Role::Monitor => SiteScope::Only(sites.clone()),
            Role::System | Role::Warehouse | Role::Admin => SiteScope::All,
        };
        let context = Arc::new(AccessContext {
            study: None,
            sites: visible,
            role,
            agent: subject.clone(),
        });
        Self {
            subject,
            client,
            role,
            sites,
            scopes,
            context,
        }
    }

    /// The storage context of this caller.
    pub fn access_context(&self) -> Arc<AccessContext> {
        self.context.clone()
    }

    /// Whether both the role and a granted scope allow `interaction` on `resource_type`.
    pub fn permits(&self, resource_type: &str, interaction: Interaction) -> bool {
        policy::role_permits(self.role, resource_type, interaction)
            && self
                .scopes
                .iter()
                .any(|s| s.grants(resource_type, interaction))
    }
}

/// The token of an `Authorization` header value (`Bearer <token>`, scheme case-insensitive
/// as RFC 6750 allows), if it is one.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let v = authorization?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Parses a role claim.
pub fn parse_role(s: &str) -> Option<Role> {
    Some(match s {
        "site" => Role::Site,
        "monitor" => Role::Monitor,
        "warehouse" => Role::Warehouse,
        "admin" => Role::Admin,
        "system" => Role::System,
        _ => return None,
    })
}

/// The claim value of a role.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Site => "site",
        Role::Monitor => "monitor",
        Role::Warehouse => "warehouse",
        Role::Admin => "admin",
        Role::System => "system",
    }
}

/// The scopes a role is given by `trialbridge token` when none are asked for.
pub fn default_scopes(r: Role) -> &'static str {
    match r {
        Role::Site => "system/*.cruds",
        Role::Monitor => "user/*.rs",
        Role::Warehouse => "system/*.rs",
        Role::Admin => "user/*.cruds",
        Role::System => "system/*.cruds",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_tokens_from_the_authorization_header() {
        assert_eq!(super::bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(super::bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(super::bearer(Some("BEARER abc")), Some("abc"));
        assert_eq!(super::bearer(Some("Basic abc")), None);
        assert_eq!(super::bearer(Some("Bearerabc")), None);
        assert_eq!(super::bearer(None), None);
    }
}
