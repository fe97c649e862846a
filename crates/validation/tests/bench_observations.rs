//! The 1,000 benchmark Observations (official examples and Synthea output): exactly the four
//! copies of `Observation-clinical-gender` (performer is an Encounter) are rejected, and the
//! 48 that claim a core vital-signs profile are checked against it and pass.

use std::path::Path;
use trialbridge_validation::{validate_bytes, Options};

#[test]
fn exactly_the_invalid_example_is_rejected() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/data/observations-1000.ndjson");
    let text = std::fs::read_to_string(path).unwrap();
    // The deployment default accepts extensions from HL7 IGs (US Core in two examples).
    let options = Options {
        extension_domains: vec!["http://hl7.org/fhir/".into()],
        ..Options::default()
    };
    let mut rejected = Vec::new();
    let mut vital_signs = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let claims_vital_signs = v["meta"]["profile"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| {
                p.as_str()
                    .is_some_and(|p| p.starts_with("http://hl7.org/fhir/StructureDefinition/"))
            });
        let report = validate_bytes(line.as_bytes(), &options);
        if claims_vital_signs {
            vital_signs += 1;
        }
        if report.has_errors() {
            let errors: Vec<_> = report.errors().collect();
            assert!(
                errors
                    .iter()
                    .all(|e| e.expression == ["Observation.performer[0]"]
                        && e.diagnostics.contains("Encounter")),
                "{}: {errors:?}",
                v["id"]
            );
            rejected.push(v["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(vital_signs, 48);
    assert_eq!(
        rejected,
        ["perf-0020", "perf-0268", "perf-0516", "perf-0764"]
    );
}

#[test]
fn a_vital_signs_observation_that_breaks_its_profile_is_rejected() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/data/observations-1000.ndjson");
    let text = std::fs::read_to_string(path).unwrap();
    let vital = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| {
            v["meta"]["profile"][0] == "http://hl7.org/fhir/StructureDefinition/vitalsigns"
                && v["valueQuantity"].is_object()
        })
        .expect("a vital-signs Observation with a quantity");
    let options = Options::default();
    assert!(!validate_bytes(vital.to_string().as_bytes(), &options).has_errors());
    let mut stones = vital.clone();
    stones["valueQuantity"]["code"] = serde_json::json!("[stone_av]");
    let report = validate_bytes(stones.to_string().as_bytes(), &options);
    assert!(
        report
            .errors()
            .any(|e| e.expression == ["Observation.value.ofType(Quantity).code"]),
        "{report:?}"
    );
    let mut uncategorised = vital.clone();
    uncategorised.as_object_mut().unwrap().remove("category");
    let report = validate_bytes(uncategorised.to_string().as_bytes(), &options);
    assert!(
        report
            .errors()
            .any(|e| e.expression == ["Observation.category"]),
        "{report:?}"
    );
}

/// R4 makes the vital-signs profiles mandatory for the Observations they describe, claimed or
/// not: the code is what makes an Observation a vital sign (LOINC, and SNOMED CT body
/// temperature as the HL7 Java validator reads it). An Observation entered in error is not
/// held to it.
#[test]
fn a_vital_sign_by_its_code_meets_its_profile_unclaimed() {
    let weight = serde_json::json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-03-16",
        "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}});
    let options = Options::default();
    let report = validate_bytes(weight.to_string().as_bytes(), &options);
    assert!(
        report
            .errors()
            .any(|e| e.expression == ["Observation.category"]),
        "{report:?}"
    );
    let mut categorised = weight.clone();
    categorised["category"] = serde_json::json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]);
    let report = validate_bytes(categorised.to_string().as_bytes(), &options);
    assert!(!report.has_errors(), "{report:?}");
    let mut pounds = categorised.clone();
    pounds["valueQuantity"]["code"] = serde_json::json!("[stone_av]");
    assert!(validate_bytes(pounds.to_string().as_bytes(), &options).has_errors());
    let mut withdrawn = weight.clone();
    withdrawn["status"] = serde_json::json!("entered-in-error");
    let report = validate_bytes(withdrawn.to_string().as_bytes(), &options);
    assert!(!report.has_errors(), "{report:?}");
    // SNOMED CT body temperature needs the LOINC code beside it.
    let mut temperature = categorised.clone();
    temperature["code"] =
        serde_json::json!({"coding": [{"system": "http://snomed.info/sct", "code": "276885007"}]});
    temperature["valueQuantity"] = serde_json::json!({"value": 36.5, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"});
    let report = validate_bytes(temperature.to_string().as_bytes(), &options);
    assert!(
        report
            .errors()
            .any(|e| e.expression == ["Observation.code"]),
        "{report:?}"
    );
}
