//! Who is calling: the [`Caller`] of a request (its storage access context, verified token,
//! reason for change), the permission checks every interaction makes, and which site a written
//! resource belongs to. Knows no HTTP and no sibling room.

use std::sync::Arc;

use serde_json::Value;
use trialbridge_auth::{Interaction, Principal};
use trialbridge_storage::{AccessContext, Role, SiteScope};

use crate::error::{forbidden, StoreError};

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
    /// The operation the request runs (`$verify`), for rules that only that operation may
    /// pass.
    pub operation: Option<&'static str>,
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
            operation: None,
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
            operation: None,
        }
    }

    /// The same caller running `operation`.
    pub fn running(&self, operation: &'static str) -> Self {
        Self {
            operation: Some(operation),
            ..self.clone()
        }
    }

    /// Whether this is trialbridge itself or a `system` token (its own tools).
    pub fn is_system(&self) -> bool {
        self.principal.is_none() || self.role() == Role::System
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
    pub fn require(&self, resource_type: &str, interaction: Interaction) -> Result<(), StoreError> {
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
    pub fn require_every_type(&self, interaction: Interaction) -> Result<(), StoreError> {
        match trialbridge_fhir::resource_type::all()
            .iter()
            .find(|t| **t != "AuditEvent" && !self.permits(t, interaction))
        {
            None => Ok(()),
            Some(t) => self.require(t, interaction),
        }
    }

    /// 403 unless the caller has one of `roles`.
    pub fn require_role(&self, roles: &[Role], what: &str) -> Result<(), StoreError> {
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

pub use trialbridge_study::{in_site_namespace, site_namespace};

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
pub fn resource_site(caller: &Caller, value: &Value) -> Result<Option<String>, StoreError> {
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
