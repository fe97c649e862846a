//! The CapabilityStatement, derived from what this server implements: the interaction tables
//! below are the ones the router serves (a test drives every listed interaction), and the
//! search parameters are exactly those the index can answer. The trial layer adjusts the
//! entries of the types it serves differently (AuditEvent, the monitor's operations) through
//! the `adjust` hook, so this room knows nothing of the trial.

use serde_json::{json, Value};
use trialbridge_fhir::{index, resource_type, search_param};

use crate::config::SmartEndpoints;

const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

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

/// `rest.security`: OAuth2 bearer tokens of the configured issuer, announced the SMART way
/// (the `oauth-uris` extension with the issuer's endpoints, when configured), so that a SMART
/// client knows the server is protected and where to get a token.
fn security(smart: &SmartEndpoints) -> Value {
    let mut s = json!({
        "cors": false,
        "service": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}]},
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth", "display": "OAuth"}]}
        ],
        "description": "OAuth2 bearer JWTs checked against the configured JWKS (RS256/ES256), SMART v2 scopes (system/ and user/) and the trialbridge_role claim (site, monitor, warehouse, admin); site and monitor tokens see their trialbridge_sites only. Every request is audited as an AuditEvent. The issuer's endpoints are also at .well-known/smart-configuration."
    });
    if let Some(token) = &smart.token {
        let mut uris = vec![json!({"url": "token", "valueUri": token})];
        if let Some(a) = &smart.authorize {
            uris.push(json!({"url": "authorize", "valueUri": a}));
        }
        s["extension"] = json!([{"url": OAUTH_URIS, "extension": uris}]);
    }
    s
}

/// `/.well-known/smart-configuration` (SMART App Launch 2.0): the issuer's endpoints from the
/// configuration and what this resource server accepts.
pub fn smart_configuration(smart: &SmartEndpoints) -> Value {
    let mut c = json!({
        "issuer": smart.issuer,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "scopes_supported": ["system/*.rs", "system/*.cruds", "user/*.rs", "user/*.cruds"],
        "capabilities": ["launch-standalone", "client-public", "client-confidential-symmetric", "client-confidential-asymmetric", "permission-v2", "permission-user"],
    });
    for (key, value) in [
        ("token_endpoint", &smart.token),
        ("authorization_endpoint", &smart.authorize),
        ("jwks_uri", &smart.jwks_uri),
    ] {
        if let Some(v) = value {
            c[key] = json!(v);
        }
    }
    c
}

/// The CapabilityStatement of the server at `base_url`; `adjust` may change the entry of each
/// resource type (it is called once per type).
pub fn capability_statement(
    base_url: &str,
    smart: &SmartEndpoints,
    adjust: &dyn Fn(&str, &mut Value),
) -> Value {
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
            "security": security(smart),
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
            "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
            "operation": [
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                {"name": "viewdefinition-run", "definition": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-run"},
            ],
        }]
    });
    cs["implementation"] =
        json!({ "description": "trialbridge trial store (MesemCart)", "url": base_url });
    cs
}
