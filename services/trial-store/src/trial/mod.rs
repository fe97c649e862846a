//! The trial's semantics on top of FHIR's: the MesemCart protocol rules (plugged into every
//! write through `fhir::WriteRules`), the study definition and its loading, and the monitor's
//! operations (source data verification, version differences, verification marks), and the
//! audit trail read and searched as AuditEvents.

pub mod audit_trail;
pub mod monitor;
pub mod protocol;
pub mod study;

/// The trial layer's part of the CapabilityStatement: AuditEvent is read and searched only
/// (with its own parameters), and the monitor's operations are listed where they are served.
pub fn adjust_capability(resource_type: &str, entry: &mut serde_json::Value) {
    use serde_json::json;
    const OPS: &str = "https://fhir.mesemcart-sponsor.example/OperationDefinition";
    if resource_type == "AuditEvent" {
        audit_trail::capability_entry(entry);
        return;
    }
    let mut ops = vec![
        json!({"name": "diff", "definition": format!("{OPS}/Resource-diff"),
               "documentation": "The difference between two versions (?from=&to=)"}),
        json!({"name": "verify", "definition": format!("{OPS}/Resource-verify"),
               "documentation": "A monitor marks a version as source-data verified"}),
    ];
    match resource_type {
        "ResearchSubject" => ops.push(json!({"name": "sdv", "definition": format!("{OPS}/ResearchSubject-sdv"),
            "documentation": "Every clinical value of the subject with its source, versions and verification"})),
        "Patient" => ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"})),
        "Group" => ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"})),
        _ => {}
    }
    if let Some(list) = entry["operation"].as_array_mut() {
        list.extend(ops);
    }
}
