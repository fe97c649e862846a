//! PATCH: a change to the current version, applied inside the write transaction (so no other
//! write comes between the version read and the version written), then validated and written
//! like an update (If-Match, protocol rules, reason for change, audit).
//!
//! Three patch formats: JSON Patch (RFC 6902, `application/json-patch+json`), JSON merge
//! patch (RFC 7386, `application/merge-patch+json`, and a plain JSON object sent as
//! `application/json`, which is what fhirpy sends) and FHIRPath Patch (a `Parameters`
//! resource as `application/fhir+json`, applied by `trialbridge_fhirpath::patch`). In a
//! transaction or batch the same formats come as the entry's resource: a `Binary` with the
//! patch's media type, or the `Parameters`.

use serde_json::Value;
use trialbridge_fhir::IssueType;
use trialbridge_storage::WriteTxn;

use crate::error::{Status, StoreError};
use crate::fhir::interactions::{self, incoming, Written};
use crate::fhir::WriteRules;
use crate::security::Caller;

/// A parsed patch body.
#[derive(Debug, Clone)]
pub enum Patch {
    /// RFC 6902 operations.
    Json(json_patch::Patch),
    /// An RFC 7386 merge document.
    Merge(Value),
    /// A FHIRPath Patch `Parameters` resource.
    FhirPath(Value),
}

/// Reads a patch body by its media type (parameters such as `; charset=utf-8` ignored).
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Patch, StoreError> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        StoreError::new(
            Status::BadRequest,
            IssueType::Structure,
            format!("the patch is not JSON: {e}"),
        )
        .at("PATCH body")
    })?;
    let json_patch = |v: Value| {
        serde_json::from_value::<json_patch::Patch>(v)
            .map(Patch::Json)
            .map_err(|e| {
                StoreError::new(
                    Status::BadRequest,
                    IssueType::Structure,
                    format!("the JSON Patch is not a list of RFC 6902 operations: {e}"),
                )
                .at("PATCH body")
            })
    };
    match (media.as_str(), &value) {
        ("application/json-patch+json", _) => json_patch(value),
        ("application/json", Value::Array(_)) => json_patch(value),
        ("application/merge-patch+json" | "application/json", Value::Object(_)) => {
            Ok(Patch::Merge(value))
        }
        ("application/fhir+json" | "application/json+fhir", v)
            if v.get("resourceType").and_then(Value::as_str) == Some("Parameters") =>
        {
            Ok(Patch::FhirPath(value))
        }
        ("application/fhir+json" | "application/json+fhir", _) => Err(StoreError::new(
            Status::BadRequest,
            IssueType::Structure,
            "a FHIRPath Patch is a Parameters resource",
        )
        .at("PATCH body")),
        (other, _) => Err(StoreError::new(
            Status::UnsupportedMediaType,
            IssueType::NotSupported,
            format!("a patch is application/json-patch+json (JSON Patch), application/merge-patch+json (JSON merge patch) or application/fhir+json (FHIRPath Patch, a Parameters resource), not '{other}'"),
        )
        .at("Content-Type")),
    }
}

/// `current` with `patch` applied; the patch may not change the type or the id.
pub fn apply(current: &Value, patch: &Patch) -> Result<Value, StoreError> {
    let rt = current
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource")
        .to_string();
    let mut out = current.clone();
    match patch {
        Patch::Json(ops) => json_patch::patch(&mut out, &ops.0).map_err(|e| {
            StoreError::new(
                Status::Unprocessable,
                IssueType::Processing,
                format!(
                    "JSON Patch operation {} ({}) failed: {}; nothing was changed",
                    e.operation, e.path, e.kind
                ),
            )
            .at(format!("{rt}{}", pointer_as_path(&e.path.to_string())))
        })?,
        Patch::Merge(m) => json_patch::merge(&mut out, m),
        Patch::FhirPath(p) => {
            out = trialbridge_fhirpath::patch::apply(current, p).map_err(|e| {
                StoreError::new(
                    Status::Unprocessable,
                    IssueType::Processing,
                    format!("FHIRPath Patch: {}; nothing was changed", e.message),
                )
                .at(e.location)
            })?
        }
    }
    for member in ["resourceType", "id"] {
        if out.get(member) != current.get(member) {
            return Err(StoreError::new(
                Status::Unprocessable,
                IssueType::Invalid,
                format!("a patch may not change the resource's {member}"),
            )
            .at(format!("{rt}.{member}")));
        }
    }
    Ok(out)
}

/// A JSON pointer (`/name/0/given`) as a FHIRPath-style location (`.name[0].given`).
fn pointer_as_path(pointer: &str) -> String {
    let mut out = String::new();
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        if token.bytes().all(|b| b.is_ascii_digit()) && !token.is_empty() {
            out.push_str(&format!("[{token}]"));
        } else {
            out.push('.');
            out.push_str(&token);
        }
    }
    out
}

/// Which resource a PATCH names.
#[derive(Debug, Clone)]
pub enum PatchOf {
    /// `PATCH [type]/[id]`
    Id(String),
    /// `PATCH [type]?criteria`: the one resource they match.
    Matching(trialbridge_fhir::search::SearchRequest),
}

impl PatchOf {
    /// The id of the resource to patch (a conditional patch that matches none is a 404, one
    /// that matches several a 412).
    pub async fn resolve(
        &self,
        txn: &mut dyn WriteTxn,
        caller: &Caller,
        rt: &'static str,
    ) -> Result<String, StoreError> {
        match self {
            PatchOf::Id(id) => Ok(id.clone()),
            PatchOf::Matching(criteria) => {
                interactions::match_one(txn, caller, rt, criteria, "conditional patch")
                    .await?
                    .ok_or_else(|| {
                        StoreError::new(
                            Status::NotFound,
                            IssueType::NotFound,
                            format!("the conditional patch matches no {rt}"),
                        )
                    })
            }
        }
    }
}

/// What to patch.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The resource type.
    pub resource_type: &'static str,
    /// The id.
    pub id: &'a str,
    /// The version the client expects (If-Match), if it said.
    pub if_match: Option<i64>,
}

/// Patches the target inside the write transaction: reads the current version, applies the
/// patch, validates the result and writes it as an update of that version.
pub async fn patch_in(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    target: Target<'_>,
    patch: &Patch,
    validation: &trialbridge_validation::Options,
) -> Result<Written, StoreError> {
    let Target {
        resource_type,
        id,
        if_match,
    } = target;
    let current = txn
        .current(resource_type, id)
        .await?
        .filter(|v| caller.ctx.sites.sees(v.site.as_deref()));
    let Some(current) = current else {
        return Err(StoreError::new(
            Status::NotFound,
            IssueType::NotFound,
            format!("{resource_type}/{id} is not known"),
        ));
    };
    let Some(body) = current.body.as_deref() else {
        return Err(StoreError::new(
            Status::Gone,
            IssueType::Deleted,
            format!("{resource_type}/{id} is deleted; a patch needs a current version"),
        ));
    };
    let stored: Value = serde_json::from_str(body).map_err(|e| {
        StoreError::new(
            Status::InternalError,
            IssueType::Exception,
            format!("the stored {resource_type}/{id} does not parse: {e}"),
        )
    })?;
    let patched = apply(&stored, patch)?;
    // `apply` kept the type and id, so the result is a resource object.
    let raw = trialbridge_fhir::json::RawResource::from_value(&patched);
    let res = incoming(resource_type, raw, patched, validation)?;
    // The version patched is the one read here: If-Match, when given, must name it.
    let expected = Some(if_match.unwrap_or(current.version));
    interactions::update(txn, caller, rules, &res, id, expected).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_three_formats_by_media_type() {
        let p = parse(
            Some("application/json-patch+json"),
            br#"[{"op":"replace","path":"/gender","value":"male"}]"#,
        )
        .unwrap();
        let out = apply(
            &json!({"resourceType":"Patient","id":"p","gender":"female"}),
            &p,
        )
        .unwrap();
        assert_eq!(out["gender"], "male");
        // fhirpy: a plain object as application/json is a merge patch; null removes.
        let p = parse(
            Some("application/json"),
            br#"{"gender":null,"active":true}"#,
        )
        .unwrap();
        let out = apply(
            &json!({"resourceType":"Patient","id":"p","gender":"female"}),
            &p,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"resourceType":"Patient","id":"p","active":true})
        );
        assert!(parse(Some("text/plain"), b"{}").is_err());
        assert!(parse(
            Some("application/fhir+json"),
            br#"{"resourceType":"Patient"}"#
        )
        .is_err());
        // FHIRPath Patch: a Parameters resource.
        let p = parse(
            Some("application/fhir+json; fhirVersion=4.0"),
            br#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[
                {"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.gender"},
                {"name":"value","valueCode":"other"}]}]}"#,
        )
        .unwrap();
        let out = apply(
            &json!({"resourceType":"Patient","id":"p","gender":"female"}),
            &p,
        )
        .unwrap();
        assert_eq!(out["gender"], "other");
    }

    #[test]
    fn a_failed_operation_names_where_and_changes_nothing() {
        let p = parse(
            Some("application/json-patch+json"),
            br#"[{"op":"remove","path":"/name/0/given"}]"#,
        )
        .unwrap();
        let e = apply(&json!({"resourceType":"Patient","id":"p"}), &p).unwrap_err();
        assert_eq!(e.status(), Status::Unprocessable);
        let p = parse(Some("application/merge-patch+json"), br#"{"id":"other"}"#).unwrap();
        assert!(apply(&json!({"resourceType":"Patient","id":"p"}), &p).is_err());
        assert_eq!(pointer_as_path("/name/0/given"), ".name[0].given");
    }
}
