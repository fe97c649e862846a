//! The HTTP edge of security: the middleware in front of every route turns the bearer token
//! into a [`Caller`] (401 with `WWW-Authenticate` otherwise), hands it to the handlers as an
//! extractor, and audits every request that a handler did not audit inside its own write
//! transaction.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use trialbridge_fhir::IssueType;

use crate::error::{Status, StoreError};
use crate::fhir::StoreState;
use crate::security::Caller;

/// The header that carries a reason for change.
pub const REASON_HEADER: &str = "x-reason-for-change";

/// Paths served without a token: the capability statement and SMART configuration, the API description, the health
/// checks and the metrics (no patient data in any of them), and the icon a browser asks for
/// (a 404, not a 401 in every browser console).
fn is_open(path: &str) -> bool {
    // The pages and the local sign-in hold no data: what the pages show, they fetch with a
    // token.
    path.starts_with("/app/")
        || path.starts_with("/dev-issuer/")
        || matches!(
            path,
            "/fhir/metadata"
                | "/fhir/.well-known/smart-configuration"
                | "/.well-known/smart-configuration"
                | "/livez"
                | "/readyz"
                | "/openapi.json"
                | "/metrics"
                | "/favicon.ico"
        )
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = StoreError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            StoreError::new(
                Status::Unauthorized,
                IssueType::Login,
                "the request was not authenticated",
            )
        })
    }
}

/// A 401 with `WWW-Authenticate`, as RFC 6750 asks.
fn unauthorized(why: &str) -> Response {
    let mut r =
        StoreError::new(Status::Unauthorized, IssueType::Login, why.to_string()).into_response();
    let challenge = format!(
        "Bearer realm=\"trialbridge\", error=\"invalid_token\", error_description=\"{}\"",
        why.replace('"', "'")
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Marks a response whose request was audited inside its own write transaction.
#[derive(Debug, Clone, Copy)]
pub struct Audited;

/// The site of the data a response carries (a read or vread), so that the request's audit
/// event belongs to that site rather than to the caller's.
#[derive(Debug, Clone)]
pub struct DataSite(pub String);

/// Marks a response as audited inside its write transaction.
pub fn audited(mut r: Response) -> Response {
    r.extensions_mut().insert(Audited);
    r
}

/// The middleware in front of every route: authenticates, then audits what the handler did
/// not (reads, searches, refusals, failures, authentication failures).
pub async fn authenticate(State(s): State<StoreState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_open(&path) {
        return next.run(req).await;
    }
    let request = format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map_or(path.as_str(), |p| p.as_str())
    );
    let address = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let token = trialbridge_auth::bearer(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    );
    let verified = match token {
        None => Err(trialbridge_auth::AuthError::Missing),
        Some(t) => s.auth.verify(t).await,
    };
    let principal = match verified {
        Ok(p) => p,
        Err(e) => {
            let why = e.to_string();
            crate::security::audit::refused(&*s.store, &request, address.as_deref(), &why).await;
            return unauthorized(&why);
        }
    };
    let reason = req
        .headers()
        .get(REASON_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .filter(|r| !r.is_empty());
    let caller = Caller::from_principal(principal, reason, request, address);
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    if response.extensions().get::<Audited>().is_none() {
        let site = response
            .extensions()
            .get::<DataSite>()
            .map(|d| d.0.clone())
            .or_else(|| caller.own_site().map(String::from));
        crate::security::audit::request(
            &*s.store,
            &caller,
            &path,
            response.status().as_u16(),
            site,
        )
        .await;
    }
    response
}
