//! The CapabilityStatement, derived from what this server implements: the interaction tables
//! below are the ones the router serves (a test drives every listed interaction), and the
//! search parameters are exactly those the index can answer. The trial layer adjusts the
//! entries of the types it serves differently (AuditEvent, the monitor's operations) through
//! the `adjust` hook, so this room knows nothing of the trial.

use serde_json::{json, Value};
use trialbridge_fhir::{index, resource_type, search_param};

/// Type-level interactions served for every resource type.
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];
/// System-level interactions served.
pub const SYSTEM_INTERACTIONS: &[&str] =
    &["transaction", "batch", "history-system", "search-system"];

fn kind_code(k: search_param::SearchParamKind) -> &'static str {
    use search_param::SearchParamKind::*;
    match k {
        Number => "number",
        Date => "date",
        String => "string",
        Token => "token",
        Reference => "reference",
        Composite => "composite",
        Quantity => "quantity",
        Uri => "uri",
        Special => "special",
    }
}

/// The CapabilityStatement of the server at `base_url`; `adjust` may change the entry of each
/// resource type (it is called once per type).
pub fn capability_statement(base_url: &str, adjust: &dyn Fn(&str, &mut Value)) -> Value {
    let resources: Vec<Value> = resource_type::all()
            .iter()
            .map(|t| {
                let params: Vec<Value> = search_param::for_type(t)
                    .filter(|d| index::is_searchable(d))
                    .map(|d| json!({ "name": d.code, "type": kind_code(d.kind), "definition": format!("http://hl7.org/fhir/SearchParameter/{}-{}", d.base, d.code.trim_start_matches('_')) }))
                    .collect();
                let mut entry = json!({
                    "type": t,
                    "interaction": TYPE_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                    "versioning": "versioned-update",
                    "readHistory": true,
                    "updateCreate": true,
                    "conditionalCreate": true,
                    "conditionalRead": "not-supported",
                    "conditionalUpdate": true,
                    "conditionalDelete": "single",
                    "searchParam": params,
                    "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
                });
                adjust(t, &mut entry);
                entry
            })
            .collect();
    let mut cs = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "publisher": "trialbridge",
        "kind": "instance",
        "software": { "name": "trialbridge", "version": env!("CARGO_PKG_VERSION") },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth", "display": "OAuth"}]}],
                "description": "OAuth2 bearer JWTs checked against the configured JWKS (RS256/ES256), SMART v2 scopes (system/ and user/) and the trialbridge_role claim (site, monitor, warehouse, admin); site and monitor tokens see their trialbridge_sites only. Every request is audited as an AuditEvent."
            },
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
            "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
            "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}],
        }]
    });
    cs["implementation"] =
        json!({ "description": "trialbridge trial store (MesemCart)", "url": base_url });
    cs
}
