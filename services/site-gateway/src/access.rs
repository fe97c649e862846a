//! Who may call the gateway's HTTP API. The key list re-identifies every subject and a dead
//! letter is a raw HL7 message (name, address, phone): both are PHI, so every route but the
//! health and status ones needs a bearer token checked as the trial store checks it (the
//! same JWKS, roles and scopes):
//! - the key list, enrolments, dead letters and the audit log: a `site` token of this
//!   gateway's site (or a `system` token, trialbridge's own tools);
//! - `POST /hl7v2`: the same, with a scope to create Observations (the interface engine that
//!   sends the site's messages).
//!
//! Before the token, the request must name one of the gateway's own Host values (a page that
//! rebinds a DNS name to the gateway's address names another), and carry no `Origin` of
//! another site (a browser's cross-site request). Every refusal is logged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use trialbridge_auth::Role;
use trialbridge_auth::{Interaction, Principal};

use crate::Gateway;

/// Paths served without a token: health, status and metrics (counters, no patient data), the
/// console's files and where to sign in (the pages hold no data; what they show comes through
/// the token-checked API).
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/livez"
            | "/readyz"
            | "/status"
            | "/metrics"
            | "/favicon.ico"
            | "/.well-known/smart-configuration"
    ) || path == "/app"
        || path.starts_with("/app/")
}

/// The verified caller of a request, for the gateway's audit log.
#[derive(Debug, Clone)]
pub struct ApiCaller {
    /// The token's subject.
    pub subject: String,
}

/// What the access check needs besides the gateway.
#[derive(Clone)]
pub struct Guard {
    /// The gateway.
    pub gateway: Gateway,
    /// Accepted Host values, lower case.
    pub hosts: Arc<Vec<String>>,
}

/// An OperationOutcome response.
pub fn problem(status: StatusCode, text: impl Into<String>) -> Response {
    let code = match status {
        StatusCode::NOT_FOUND => trialbridge_fhir::IssueType::NotFound,
        StatusCode::UNAUTHORIZED => trialbridge_fhir::IssueType::Login,
        StatusCode::FORBIDDEN => trialbridge_fhir::IssueType::Forbidden,
        StatusCode::CONFLICT => trialbridge_fhir::IssueType::Conflict,
        s if s.is_server_error() => trialbridge_fhir::IssueType::Transient,
        _ => trialbridge_fhir::IssueType::Invalid,
    };
    let oo = trialbridge_fhir::OperationOutcome::single(trialbridge_fhir::OutcomeIssue::error(
        code, text,
    ));
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        oo.to_json().to_string(),
    )
        .into_response()
}

/// What a route needs of the token.
fn needs(method: &Method, path: &str) -> (&'static str, Interaction) {
    if path == "/hl7v2" {
        ("Observation", Interaction::Create)
    } else if method == Method::GET {
        ("Patient", Interaction::Read)
    } else {
        ("Patient", Interaction::Update)
    }
}

/// Why a verified caller may not use the API, if it may not.
fn refusal(p: &Principal, site_study: &str, method: &Method, path: &str) -> Option<String> {
    let of_this_site = match p.role {
        Role::System => true,
        Role::Site => p.sites.iter().any(|s| s == site_study),
        _ => false,
    };
    if !of_this_site {
        return Some(format!(
            "the gateway's API takes a site token of {site_study} (this token: role {}, sites {:?})",
            trialbridge_auth::role_name(p.role),
            p.sites
        ));
    }
    let (ty, interaction) = needs(method, path);
    if !p.permits(ty, interaction) {
        return Some(format!(
            "the token's scopes do not allow {interaction:?} on {ty}, which {path} needs"
        ));
    }
    None
}

/// The access check of every request (a middleware).
pub async fn check(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_open(&path) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let refuse = |status: StatusCode, why: String| {
        tracing::warn!(%peer, %path, reason = %why, "gateway API request refused");
        let mut r = problem(status, why);
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"trialbridge site gateway\""),
            );
        }
        r
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !guard.hosts.contains(&host) {
        let shown: String = host.chars().take(100).collect();
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "the Host '{shown}' is not one this gateway answers to (TRIALBRIDGE_GATEWAY_HOSTS)"
            ),
        );
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let same = origin.to_str().is_ok_and(|o| {
            let o = o.to_ascii_lowercase();
            o == format!("http://{host}") || o == format!("https://{host}")
        });
        if !same {
            return refuse(
                StatusCode::FORBIDDEN,
                "requests from web pages of another origin are refused".into(),
            );
        }
    }
    let token = trialbridge_auth::bearer(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    );
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            trialbridge_auth::AuthError::Missing.to_string(),
        );
    };
    let principal = match guard.gateway.config.api.tokens.verify(token).await {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    if let Some(why) = refusal(
        &principal,
        &guard.gateway.config.site_study(),
        req.method(),
        &path,
    ) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    req.extensions_mut().insert(ApiCaller {
        subject: principal.subject.clone(),
    });
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use trialbridge_auth::Scope;

    fn principal(role: Role, sites: &[&str], scope: &str) -> Principal {
        Principal::new(
            "someone".into(),
            None,
            role,
            sites.iter().map(|s| s.to_string()).collect(),
            scope.split(' ').filter_map(Scope::parse).collect(),
        )
    }

    #[test]
    fn only_this_sites_staff_and_trialbridge_itself() {
        let site = "mesemcart-site-01";
        let get = Method::GET;
        let post = Method::POST;
        let own = principal(Role::Site, &[site], "system/*.cruds");
        assert_eq!(refusal(&own, site, &get, "/enrolments"), None);
        assert_eq!(refusal(&own, site, &post, "/hl7v2"), None);
        for other in [
            principal(Role::Site, &["mesemcart-site-02"], "system/*.cruds"),
            principal(Role::Monitor, &[site], "user/*.rs"),
            principal(Role::Warehouse, &[], "system/*.rs"),
            principal(Role::Admin, &[], "user/*.cruds"),
        ] {
            assert!(refusal(&other, site, &get, "/enrolments").is_some());
            assert!(refusal(&other, site, &post, "/hl7v2").is_some());
        }
        let system = principal(Role::System, &[], "system/*.cruds");
        assert_eq!(refusal(&system, site, &get, "/dead-letters"), None);
        // A read-only site token reads the key list but neither enrols nor sends.
        let reader = principal(Role::Site, &[site], "system/*.rs");
        assert_eq!(refusal(&reader, site, &get, "/enrolments"), None);
        assert!(refusal(&reader, site, &post, "/enrolments").is_some());
        assert!(refusal(&reader, site, &post, "/hl7v2").is_some());
    }
}
