//! The HTTP edge of security: bearer token to [`Caller`], the permission checks handlers make,
//! which site a written resource belongs to, and the middleware that refuses unauthenticated
//! requests and audits every request that a handler did not audit inside its transaction.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use trialbridge_auth::{Interaction, Principal};
use trialbridge_fhir::IssueType;
use trialbridge_storage::{AccessContext, Role, SiteScope};

use crate::error::ApiError;
use crate::StoreState;

/// The header that carries a reason for change.
pub const REASON_HEADER: &str = "x-reason-for-change";

/// Paths served without a token: the capability statement, the API description, the health
/// checks and the metrics (no patient data in any of them).
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/fhir/metadata" | "/livez" | "/readyz" | "/openapi.json" | "/metrics"
    )
}

/// Who made a request, and what it carries for the audit trail.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The storage context (sites seen, role, agent).
    pub ctx: Arc<AccessContext>,
    /// The verified token; `None` for trialbridge itself (start-up loading, CLI).
    pub principal: Option<Arc<Principal>>,
    /// `X-Reason-For-Change`, if sent.
    pub reason: Option<String>,
    /// Method and path with query, as received.
    pub request: Arc<str>,
    /// The client's address, if known.
    pub address: Option<Arc<str>>,
}

impl Caller {
    /// trialbridge itself, acting as `agent`.
    pub fn system(agent: &str) -> Self {
        Self {
            ctx: Arc::new(AccessContext::system(agent)),
            principal: None,
            reason: None,
            request: agent.into(),
            address: None,
        }
    }

    /// A caller with a verified token.
    pub fn from_principal(
        principal: Arc<Principal>,
        reason: Option<String>,
        request: String,
        address: Option<String>,
    ) -> Self {
        Self {
            ctx: principal.access_context(),
            principal: Some(principal),
            reason,
            request: request.into(),
            address: address.map(Into::into),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.ctx.role
    }

    /// Whether `interaction` on `resource_type` is allowed.
    pub fn permits(&self, resource_type: &str, interaction: Interaction) -> bool {
        match &self.principal {
            None => true,
            Some(p) => p.permits(resource_type, interaction),
        }
    }

    /// 403 unless `interaction` on `resource_type` is allowed.
    pub fn require(&self, resource_type: &str, interaction: Interaction) -> Result<(), ApiError> {
        if self.permits(resource_type, interaction) {
            return Ok(());
        }
        Err(forbidden(format!(
            "the {} role with the granted scopes may not {} {resource_type}",
            trialbridge_auth::role_name(self.role()),
            match interaction {
                Interaction::Create => "create",
                Interaction::Read => "read",
                Interaction::Update => "update",
                Interaction::Delete => "delete",
                Interaction::Search => "search",
            }
        )))
    }

    /// 403 unless `interaction` is allowed on every resource type (system-level history).
    pub fn require_every_type(&self, interaction: Interaction) -> Result<(), ApiError> {
        match trialbridge_fhir::resource_type::all()
            .iter()
            .find(|t| **t != "AuditEvent" && !self.permits(t, interaction))
        {
            None => Ok(()),
            Some(t) => self.require(t, interaction),
        }
    }

    /// 403 unless the caller has one of `roles`.
    pub fn require_role(&self, roles: &[Role], what: &str) -> Result<(), ApiError> {
        if self.principal.is_none() || roles.contains(&self.role()) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "the {} role may not {what}",
                trialbridge_auth::role_name(self.role())
            )))
        }
    }

    /// The site a site caller writes for.
    pub fn own_site(&self) -> Option<&str> {
        match (&self.ctx.role, &self.ctx.sites) {
            (Role::Site, SiteScope::Only(s)) => s.first().map(String::as_str),
            _ => None,
        }
    }
}

/// A 403 OperationOutcome.
pub fn forbidden(why: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, IssueType::Forbidden, why)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                IssueType::Login,
                "the request was not authenticated",
            )
        })
    }
}

/// The site study a resource names in its content: `ResearchSubject.study`, or the
/// `workflow-researchStudy` extension, when that references a site study.
pub fn named_site(value: &Value) -> Option<String> {
    let refs = value
        .get("study")
        .into_iter()
        .chain(
            value
                .get("extension")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|e| {
                    e.get("url").and_then(Value::as_str)
                        == Some("http://hl7.org/fhir/StructureDefinition/workflow-researchStudy")
                })
                .filter_map(|e| e.get("valueReference")),
        )
        .filter_map(|r| r.get("reference").and_then(Value::as_str));
    for r in refs {
        let id = r.rsplit_once("ResearchStudy/").map_or(r, |(_, id)| id);
        if let Some(site) = trialbridge_study::site_studies().iter().find(|s| *s == id) {
            return Some(site.clone());
        }
    }
    None
}

/// The site a written resource belongs to: a site caller's own site (the content may not
/// name another); for everyone else the site the content names, or none (shared).
pub fn resource_site(caller: &Caller, value: &Value) -> Result<Option<String>, ApiError> {
    let named = named_site(value);
    match caller.own_site() {
        Some(own) => match named {
            Some(other) if other != own => Err(forbidden(format!(
                "the resource names the site study {other}; this token writes for {own} only"
            ))),
            _ => Ok(Some(own.to_string())),
        },
        None => Ok(named),
    }
}

/// A 401 with `WWW-Authenticate`, as RFC 6750 asks.
fn unauthorized(why: &str) -> Response {
    let mut r =
        ApiError::new(StatusCode::UNAUTHORIZED, IssueType::Login, why.to_string()).into_response();
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
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim);
    let verified = match token {
        None => Err(trialbridge_auth::AuthError::Missing),
        Some(t) => s.auth.verify(t).await,
    };
    let principal = match verified {
        Ok(p) => p,
        Err(e) => {
            let why = e.to_string();
            crate::audit::refused(&s, &request, address.as_deref(), &why).await;
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
        crate::audit::request(&s, &caller, &path, response.status()).await;
    }
    response
}
