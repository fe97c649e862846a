//! The 19 FHIR-Converter messages through the gateway's mapping, compared in meaning with the
//! converter's own output beside them (one vendor's mapping, not a norm): Observation code,
//! value, unit, effective time and status; Patient gender and birth year; Procedure code and
//! time. Every difference is one of the deliberate ones listed in `DELIBERATE`, with why.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use site_gateway::mapping::{map, Event};
use trialbridge_hl7v2::Message;

/// Differences on purpose: (message, what, why).
const DELIBERATE: &[(&str, &str, &str)] = &[
    ("*", "status of OBX-11 S or I", "S (partial) is preliminary and I (in process) registered in the v2-to-FHIR IG's ConceptMap for table 0085, which trialbridge follows; the converter says unknown"),
    ("*", "observation from a non-OBX segment", "the converter also turns PID-30/PV1/TXA fields into Observations (death certificate, injury narrative); trialbridge maps results (OBX) only"),
    ("*", "procedure from PR1 without a code", "PR1-3 is empty in these messages; the converter emits a Procedure with no code, trialbridge emits none"),
    ("*", "procedure from a non-PR1 segment", "the converter makes Procedures of death certification and autopsy (PDA) and of the OBR order code; trialbridge maps PR1 only"),
    ("*", "unit text", "the converter puts the unit text (OBX-6.2) or the raw code in Quantity.unit; trialbridge keeps OBX-6.2 as unit and the code in Quantity.code"),
    ("*", "local code system", "codes of systems HL7 table 0396 does not name become urn:mesemcart:<site>:local, translated later by the study ConceptMap; the converter invents http://example.com/... systems"),
    ("*", "effective time without zone", "HL7 times without a zone are the site's wall-clock times in trialbridge (Europe/Berlin, with daylight-saving time); the converter leaves them as local date-times"),
    ("*", "ICD-9 system", "I9 of table 0396 goes to http://hl7.org/fhir/sid/icd-9-cm, the URI R4 names for ICD-9(-CM); the converter writes http://hl7.org/fhir/sid/icd-9, which R4 does not define"),
    ("*", "condition from a non-DG1 segment", "the converter also makes Conditions of PV2 admit reasons and PID-fields; trialbridge maps DG1 only"),
    ("*", "condition from DG1 without a code", "DG1-3 is empty; the converter emits a Condition with an identifier only, trialbridge emits none"),
    ("*", "encounter status by discharge time", "a discharge time (PV1-45) finishes the visit in trialbridge whatever the trigger; the converter reads the status from the trigger alone (an A04 with PV1-45 stays in-progress)"),
    ("*", "encounter end without PV1-45", "PV1-45 is empty in these messages; the converter takes an end from another field, trialbridge ends a visit by PV1-45 only"),
    ("*", "encounter status planned", "the converter makes an A08 with a pre-admit class 'planned'; trialbridge keeps in-progress until a discharge"),
    ("*", "encounter without a class trialbridge maps", "PV1-2 of this message is not I, O, E or P"),
    ("*", "effective from OBR-7", "without OBX-14 trialbridge takes OBR-7 (the observation date/time of the order); the converter leaves effective empty"),
];

fn fixtures() -> std::path::PathBuf {
    // The fixtures live with the parser crate, which owns them.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/hl7v2/tests/fixtures/fhir-converter")
}

fn code_key(cc: &Value) -> Vec<String> {
    cc.get("coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("code").and_then(Value::as_str).map(String::from))
        .collect()
}

#[derive(Default)]
struct Tally {
    compared: usize,
    agreed: BTreeMap<&'static str, usize>,
    differences: BTreeMap<String, usize>,
}

#[test]
fn the_meaning_matches_the_reference_mapping() {
    let dir = fixtures();
    let mut names: Vec<String> = std::fs::read_dir(dir.join("messages"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 19);
    let mut t = Tally::default();
    for name in &names {
        let bytes = std::fs::read(dir.join("messages").join(name)).unwrap();
        let msg = Message::parse(&bytes).unwrap();
        let mapped = map(&msg, "site-01", &site_gateway::mapping::berlin())
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let reference: Value = serde_json::from_slice(
            &std::fs::read(
                dir.join("expected-fhir")
                    .join(name.replace(".hl7", "-expected.json")),
            )
            .unwrap(),
        )
        .unwrap();
        let resources: Vec<&Value> = reference["entry"]
            .as_array()
            .map(|a| a.iter().map(|e| &e["resource"]).collect())
            .unwrap_or_default();
        // Patient: gender and birth year.
        if let Some(p) = resources.iter().find(|r| r["resourceType"] == "Patient") {
            t.compared += 1;
            assert_eq!(
                mapped.groups[0].patient.gender,
                p["gender"].as_str(),
                "{name}: gender"
            );
            let year = |d: Option<&str>| d.map(|d| d[..4].to_string());
            assert_eq!(
                year(mapped.groups[0].patient.birth_date.as_deref()),
                year(p["birthDate"].as_str()),
                "{name}: birth year"
            );
            *t.agreed.entry("patient gender and birth year").or_default() += 1;
        } else {
            assert!(
                matches!(mapped.event, Event::Merge),
                "{name}: no reference Patient"
            );
        }
        // Observations: matched by code.
        let ours: Vec<&Value> = mapped
            .groups
            .iter()
            .flat_map(|g| &g.resources)
            .filter(|r| r["resourceType"] == "Observation")
            .collect();
        for o in resources
            .iter()
            .filter(|r| r["resourceType"] == "Observation")
        {
            let key = code_key(&o["code"]);
            let Some(mine) = ours.iter().find(|m| code_key(&m["code"]) == key) else {
                *t.differences
                    .entry("observation from a non-OBX segment".into())
                    .or_default() += 1;
                continue;
            };
            t.compared += 1;
            let status_ref = o["status"].as_str().unwrap_or("");
            let status = mine["status"].as_str().unwrap();
            if status != status_ref {
                let raw =
                    if status_ref == "unknown" && matches!(status, "preliminary" | "registered") {
                        "status of OBX-11 S or I"
                    } else {
                        panic!("{name} {key:?}: status {status} vs {status_ref}")
                    };
                *t.differences.entry(raw.into()).or_default() += 1;
            }
            for (field, what) in [
                ("valueQuantity", "value"),
                ("valueString", "string"),
                ("valueCodeableConcept", "concept"),
            ] {
                let (a, b) = (&mine[field], &o[field]);
                if b.is_null() {
                    continue;
                }
                match field {
                    "valueQuantity" => {
                        assert_eq!(
                            a["value"].as_f64(),
                            b["value"].as_f64(),
                            "{name} {key:?}: {what}"
                        );
                        if a["unit"] != b["unit"] {
                            *t.differences.entry("unit text".into()).or_default() += 1;
                        }
                    }
                    "valueCodeableConcept" => {
                        assert_eq!(code_key(a), code_key(b), "{name} {key:?}: {what}")
                    }
                    _ => assert_eq!(a, b, "{name} {key:?}: {what}"),
                }
            }
            // A repeated OBX-5: one component per value, with the result's code.
            let numbers = |o: &Value| -> Vec<Option<f64>> {
                o["component"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| code_key(&c["code"]) == key && !c["valueQuantity"].is_null())
                    .map(|c| c["valueQuantity"]["value"].as_f64())
                    .collect()
            };
            let repeated = numbers(o);
            if !repeated.is_empty() {
                assert_eq!(numbers(mine), repeated, "{name} {key:?}: repeated values");
                *t.agreed.entry("repeated values as components").or_default() += 1;
            }
            let (ea, eb) = (
                mine["effectiveDateTime"].as_str(),
                o["effectiveDateTime"].as_str(),
            );
            match (ea, eb) {
                (Some(a), Some(b)) if a == b => {}
                // The same instant written in another zone.
                (Some(a), Some(b))
                    if b.len() > 19
                        && trialbridge_fhir::date::parse_range(a).map(|r| r.low)
                            == trialbridge_fhir::date::parse_range(b).map(|r| r.low) => {}
                (Some(a), Some(b)) if a.starts_with(&b[..b.len().min(19)]) => {
                    *t.differences
                        .entry("effective time without zone".into())
                        .or_default() += 1
                }
                (None, None) => {}
                (Some(_), None) => {
                    *t.differences
                        .entry("effective from OBR-7".into())
                        .or_default() += 1
                }
                (a, b) => panic!("{name} {key:?}: effective {a:?} vs {b:?}"),
            }
            let sys_ref = o["code"]["coding"][0]["system"].as_str().unwrap_or("");
            if sys_ref.starts_with("http://example.com/") {
                *t.differences.entry("local code system".into()).or_default() += 1;
            } else {
                assert_eq!(
                    mine["code"]["coding"][0]["system"].as_str().unwrap_or(""),
                    sys_ref,
                    "{name} {key:?}: system"
                );
            }
            *t.agreed
                .entry("observation status, value, effective")
                .or_default() += 1;
        }
        // Procedures: by code.
        for p in resources
            .iter()
            .filter(|r| r["resourceType"] == "Procedure")
        {
            if p["code"].is_null() {
                *t.differences
                    .entry("procedure from PR1 without a code".into())
                    .or_default() += 1;
                continue;
            }
            let key = code_key(&p["code"]);
            match mapped
                .groups
                .iter()
                .flat_map(|g| &g.resources)
                .find(|r| r["resourceType"] == "Procedure" && code_key(&r["code"]) == key)
            {
                Some(mine) => {
                    t.compared += 1;
                    assert_eq!(
                        mine["performedDateTime"].as_str().map(|s| &s[..10]),
                        p["performedDateTime"].as_str().map(|s| &s[..10]),
                        "{name}: procedure time"
                    );
                    assert_eq!(mine["status"], p["status"], "{name}: procedure status");
                    *t.agreed
                        .entry("procedure code, time and status")
                        .or_default() += 1;
                }
                None => {
                    *t.differences
                        .entry("procedure from a non-PR1 segment".into())
                        .or_default() += 1
                }
            }
        }
        // Conditions: by code; the onset.
        for c in resources
            .iter()
            .filter(|r| r["resourceType"] == "Condition")
        {
            if c["code"].is_null() {
                *t.differences
                    .entry("condition from DG1 without a code".into())
                    .or_default() += 1;
                continue;
            }
            let key = code_key(&c["code"]);
            let Some(mine) = mapped
                .groups
                .iter()
                .flat_map(|g| &g.resources)
                .find(|r| r["resourceType"] == "Condition" && code_key(&r["code"]) == key)
            else {
                *t.differences
                    .entry("condition from a non-DG1 segment".into())
                    .or_default() += 1;
                continue;
            };
            t.compared += 1;
            let instant = |v: &Value| {
                v.as_str()
                    .and_then(|d| trialbridge_fhir::date::parse_range(d).map(|r| r.low))
            };
            assert_eq!(
                instant(&mine["onsetDateTime"]),
                instant(&c["onsetDateTime"]),
                "{name} {key:?}: onset"
            );
            let (sa, sb) = (
                &mine["code"]["coding"][0]["system"],
                &c["code"]["coding"][0]["system"],
            );
            if sa != sb {
                assert_eq!(
                    (sa.as_str(), sb.as_str()),
                    (
                        Some("http://hl7.org/fhir/sid/icd-9-cm"),
                        Some("http://hl7.org/fhir/sid/icd-9")
                    ),
                    "{name} {key:?}: system"
                );
                *t.differences.entry("ICD-9 system".into()).or_default() += 1;
            }
            *t.agreed.entry("condition code and onset").or_default() += 1;
        }
        // Encounters: class, start, status.
        for e in resources
            .iter()
            .filter(|r| r["resourceType"] == "Encounter")
        {
            let Some(mine) = mapped
                .groups
                .iter()
                .flat_map(|g| &g.resources)
                .find(|r| r["resourceType"] == "Encounter")
            else {
                *t.differences
                    .entry("encounter without a class trialbridge maps".into())
                    .or_default() += 1;
                continue;
            };
            t.compared += 1;
            assert_eq!(mine["class"]["code"], e["class"]["code"], "{name}: class");
            let instant = |v: &Value| {
                v.as_str()
                    .and_then(|d| trialbridge_fhir::date::parse_range(d).map(|r| r.low))
            };
            assert_eq!(
                instant(&mine["period"]["start"]),
                instant(&e["period"]["start"]),
                "{name}: start"
            );
            match (
                instant(&mine["period"]["end"]),
                instant(&e["period"]["end"]),
            ) {
                (a, b) if a == b => {}
                (None, Some(_)) => {
                    *t.differences
                        .entry("encounter end without PV1-45".into())
                        .or_default() += 1
                }
                (a, b) => panic!("{name}: end {a:?} vs {b:?}"),
            }
            match (mine["status"].as_str(), e["status"].as_str()) {
                (a, b) if a == b => {}
                (Some("finished"), Some("in-progress")) if !e["period"]["end"].is_null() => {
                    *t.differences
                        .entry("encounter status by discharge time".into())
                        .or_default() += 1
                }
                (Some("in-progress"), Some("planned")) => {
                    *t.differences
                        .entry("encounter status planned".into())
                        .or_default() += 1
                }
                (a, b) => panic!("{name}: encounter status {a:?} vs {b:?}"),
            }
            *t.agreed
                .entry("encounter class, period, status")
                .or_default() += 1;
        }
    }
    println!(
        "compared {} facts; agreed: {:?}; deliberate differences: {:?}",
        t.compared, t.agreed, t.differences
    );
    for what in t.differences.keys() {
        assert!(
            DELIBERATE.iter().any(|(_, w, _)| w == what),
            "an unlisted difference: {what}"
        );
    }
    assert!(t.compared >= 60, "only {} facts compared", t.compared);
}
