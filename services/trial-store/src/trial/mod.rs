//! The trial's semantics on top of FHIR's: the MesemCart protocol rules (plugged into every
//! write through `fhir::WriteRules`), the study definition and its loading, and the monitor's
//! operations (source data verification, version differences, verification marks), and the
//! audit trail read and searched as AuditEvents.

pub mod audit_trail;
pub mod monitor;
pub mod protocol;
pub mod queries;
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
               "documentation": "A monitor marks a version as source-data verified (once per version)"}),
        json!({"name": "raise-query", "definition": format!("{OPS}/Resource-raise-query"),
               "documentation": "A monitor raises a data query on a version (a Task)"}),
    ];
    match resource_type {
        "ResearchSubject" => ops.push(json!({"name": "sdv", "definition": format!("{OPS}/ResearchSubject-sdv"),
            "documentation": "Every clinical value of the subject with its source, versions and verification"})),
        "ResearchStudy" => ops.push(json!({"name": "sdv", "definition": format!("{OPS}/ResearchStudy-sdv"),
            "documentation": "A site's verification worklist: per subject, verified / unverified / changed values, open queries, deviations"})),
        "Task" => ops.extend([
            json!({"name": "answer", "definition": format!("{OPS}/Task-answer"),
                   "documentation": "The site answers a data query"}),
            json!({"name": "close", "definition": format!("{OPS}/Task-close"),
                   "documentation": "The monitor closes a data query"}),
        ]),
        "Patient" => ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"})),
        "Group" => ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"})),
        _ => {}
    }
    if let Some(list) = entry["operation"].as_array_mut() {
        list.extend(ops);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// Every operation the CapabilityStatement names has an OperationDefinition: HL7's by
    /// their canonical, trialbridge's own as a resource of the study definition the store
    /// loads (so `GET OperationDefinition/{id}` answers), with the code it is listed under.
    #[test]
    fn every_listed_operation_has_a_served_definition() {
        let cs = crate::fhir::capability::capability_statement(
            "http://x/fhir",
            &crate::config::SmartEndpoints::default(),
            &super::adjust_capability,
        );
        let mut own = 0;
        for r in cs["rest"][0]["resource"].as_array().unwrap() {
            for op in r["operation"].as_array().into_iter().flatten() {
                let url = op["definition"].as_str().unwrap();
                if url.starts_with("http://hl7.org/fhir/") {
                    continue;
                }
                own += 1;
                let id = url.rsplit('/').next().unwrap();
                let def = trialbridge_study::resource("OperationDefinition", id)
                    .unwrap_or_else(|| panic!("no OperationDefinition {id} for {url}"));
                assert_eq!(def["url"], url);
                assert_eq!(def["code"], op["name"], "{url}");
                let applies = def["resource"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|t| t == "Resource" || t == r["type"]);
                assert!(applies, "{url} listed on {}", r["type"]);
            }
        }
        assert!(own > 0);
    }
}
