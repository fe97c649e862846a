//! `$validate` (`POST [type]/$validate`, `POST [type]/{id}/$validate`, `GET
//! [type]/{id}/$validate`): the checks every write passes, as a report instead of a write.
//! The answer is 200 with the OperationOutcome whether or not the resource is valid.

use serde_json::Value;
use trialbridge_fhir::structure::VITAL_SIGNS_PROFILES;
use trialbridge_fhir::{IssueType, OperationOutcome, OutcomeIssue};
use trialbridge_validation::Report;

use trialbridge_auth::Interaction;

use crate::error::{Status, StoreError};
use crate::fhir::interactions::{found, known_type};
use crate::fhir::StoreState;
use crate::security::Caller;

/// What the request asks to validate.
struct ValidateRequest {
    resource: Option<Value>,
    mode: Option<String>,
    profile: Option<String>,
}

fn bad(msg: impl Into<String>, at: &str) -> StoreError {
    StoreError::new(Status::BadRequest, IssueType::Invalid, msg).at(at.to_string())
}

/// Reads a body that is either the resource or a Parameters with `resource`, `mode`, `profile`.
/// Layer-1 problems of the body (duplicate keys, syntax) are the report (`Err` inside), not a
/// 400.
fn parse_request(
    bytes: &[u8],
    s: &StoreState,
    pairs: &[(String, String)],
) -> Result<Result<ValidateRequest, OperationOutcome>, StoreError> {
    let query = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut req = ValidateRequest {
        resource: None,
        mode: query("mode"),
        profile: query("profile"),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Ok(req));
    }
    let value = match trialbridge_validation::json_text::parse(bytes, &s.config.validation.limits) {
        Ok(v) => v,
        Err(issue) => return Ok(Err(OperationOutcome::single(issue))),
    };
    if value.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        for p in value
            .get("parameter")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match p.get("name").and_then(Value::as_str) {
                Some("resource") => req.resource = p.get("resource").cloned(),
                Some("mode") => {
                    req.mode = p.get("valueCode").and_then(Value::as_str).map(String::from)
                }
                Some("profile") => {
                    req.profile = p
                        .get("valueUri")
                        .or_else(|| p.get("valueCanonical"))
                        .and_then(Value::as_str)
                        .map(String::from)
                }
                Some(other) => {
                    return Err(bad(
                        format!("$validate has no parameter '{other}' (resource, mode, profile)"),
                        "Parameters.parameter",
                    ))
                }
                None => return Err(bad("a parameter needs a name", "Parameters.parameter")),
            }
        }
    } else {
        req.resource = Some(value);
    }
    Ok(Ok(req))
}

fn report_for(
    s: &StoreState,
    rt: &str,
    resource: &Value,
    profile: Option<&str>,
) -> Result<Report, StoreError> {
    let body_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if body_type != rt {
        return Err(bad(
            format!("resourceType '{body_type}' does not match the URL's type '{rt}'"),
            "resourceType",
        ));
    }
    let Some(profile) = profile else {
        return Ok(trialbridge_validation::validate_resource(
            resource,
            &s.config.validation,
        ));
    };
    // A profile parameter is validated as if the resource claimed it.
    let url = profile.split('|').next().unwrap_or(profile);
    let known = VITAL_SIGNS_PROFILES.iter().any(|p| p.url == url)
        || trialbridge_validation::trial::profiles()
            .iter()
            .any(|p| p.url == url);
    if !known {
        return Err(StoreError::new(
            Status::BadRequest,
            IssueType::NotSupported,
            format!("the profile {url} is not known here (known: the R4 vital-signs profiles and the MesemCart profiles)"),
        )
        .at("profile"));
    }
    let mut claimed = resource.clone();
    if let Value::Object(m) = &mut claimed {
        let meta = m
            .entry("meta")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(meta) = meta {
            let profiles = meta
                .entry("profile")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = profiles {
                list.push(Value::from(url));
            }
        }
    }
    Ok(trialbridge_validation::validate_resource(
        &claimed,
        &s.config.validation,
    ))
}

/// `POST [type]/$validate` with `bytes` (the resource, or Parameters) and the query `pairs`:
/// the report as an OperationOutcome.
pub async fn type_level(
    s: &StoreState,
    caller: &Caller,
    rt: &'static str,
    pairs: &[(String, String)],
    bytes: &[u8],
) -> Result<OperationOutcome, StoreError> {
    caller.require(rt, Interaction::Read)?;
    let req = match parse_request(bytes, s, pairs)? {
        Ok(req) => req,
        Err(layer1) => return Ok(layer1),
    };
    match req.mode.as_deref() {
        None | Some("create") => {}
        Some(m) => {
            return Err(bad(
                format!("mode '{m}' needs an instance: POST {rt}/[id]/$validate"),
                "mode",
            ))
        }
    }
    let resource = req
        .resource
        .ok_or_else(|| bad("$validate needs a resource to validate", "resource"))?;
    let mut report = report_for(s, rt, &resource, req.profile.as_deref())?;
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    report
        .issues
        .extend(protocol_issues(s, caller, rt, &resource, &id, &report).await?);
    Ok(report.to_outcome())
}

/// The protocol rules (layer 6) for a resource that passed layers 1-5, as a write would apply
/// them: run in a write transaction that changes nothing (the rules only read), so they see
/// the same facts a write would. Deviations come back as warnings.
async fn protocol_issues(
    s: &StoreState,
    caller: &Caller,
    rt: &str,
    resource: &Value,
    id: &str,
    report: &Report,
) -> Result<Vec<OutcomeIssue>, StoreError> {
    if report.has_errors() {
        return Ok(Vec::new());
    }
    let Ok(rt) = known_type(rt) else {
        return Ok(Vec::new());
    };
    let incoming = crate::fhir::interactions::incoming(
        rt,
        trialbridge_fhir::json::RawResource::from_value(resource),
        resource.clone(),
        &s.config.validation,
    )?;
    let id = id.to_string();
    let rules = s.rules.clone();
    // The rules see what the caller sees: another site's facts are unknown, never named.
    let who = caller.clone();
    trialbridge_storage::write(&*s.store, &caller.ctx, move |txn| {
        Box::pin(async move {
            match rules.check(txn, &who, &incoming, &id).await {
                Ok(deviations) => Ok(deviations
                    .iter()
                    .map(|d| {
                        OutcomeIssue::warning(
                            IssueType::BusinessRule,
                            d["detail"].as_str().unwrap_or("protocol deviation"),
                        )
                        .at(format!("{}.effective", incoming.resource_type))
                    })
                    .collect()),
                Err(StoreError::Rejected { outcome, .. }) => Ok(outcome.issues),
                Err(e) => Err(e),
            }
        })
    })
    .await
}

/// `POST [type]/{id}/$validate` (modes update and delete) and `GET [type]/{id}/$validate`
/// (the stored current version): the report as an OperationOutcome.
pub async fn instance_level(
    s: &StoreState,
    caller: &Caller,
    (rt, id): (&'static str, &str),
    pairs: &[(String, String)],
    bytes: &[u8],
) -> Result<OperationOutcome, StoreError> {
    caller.require(rt, Interaction::Read)?;
    let req = match parse_request(bytes, s, pairs)? {
        Ok(req) => req,
        Err(layer1) => return Ok(layer1),
    };
    let current = s.store.read(&caller.ctx, rt, id).await?;
    match req.mode.as_deref() {
        Some("delete") => {
            let outcome = match current.filter(|c| !c.deleted) {
                Some(_) => Report::default().to_outcome(),
                None => OperationOutcome::single(
                    OutcomeIssue::error(IssueType::NotFound, format!("{rt}/{id} does not exist"))
                        .at(rt.to_string()),
                ),
            };
            Ok(outcome)
        }
        None | Some("update") => {
            let resource = match req.resource {
                Some(r) => {
                    if r.get("id").and_then(Value::as_str) != Some(id) {
                        return Err(bad(
                            format!("the resource's id must be '{id}' to validate an update of {rt}/{id}"),
                            &format!("{rt}.id"),
                        ));
                    }
                    r
                }
                None => {
                    let stored = found(rt, id, current)?;
                    serde_json::from_str(stored.body.as_deref().unwrap_or("{}")).map_err(|e| {
                        StoreError::new(
                            Status::InternalError,
                            IssueType::Exception,
                            format!("the stored {rt}/{id} is not JSON: {e}"),
                        )
                    })?
                }
            };
            let mut report = report_for(s, rt, &resource, req.profile.as_deref())?;
            report
                .issues
                .extend(protocol_issues(s, caller, rt, &resource, id, &report).await?);
            Ok(report.to_outcome())
        }
        Some(m) => Err(bad(
            format!("mode '{m}' is not one of create, update, delete"),
            "mode",
        )),
    }
}
