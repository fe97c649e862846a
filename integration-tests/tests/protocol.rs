//! The MesemCart trial profiles and protocol rules at the HTTP edge, with the realistic
//! subject of `studies/mesemcart/examples/`: a broken profile or rule is a 422 naming the
//! element and stores nothing; a visit outside its window is stored and recorded as a
//! DetectedIssue.

use integration_tests::{get_json, post_fhir, put_fhir, repo_root, TestStore};
use serde_json::{json, Value};

fn example(name: &str) -> Value {
    let path = repo_root().join("studies/mesemcart/examples").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn path_of(v: &Value) -> String {
    format!(
        "{}/{}",
        v["resourceType"].as_str().unwrap(),
        v["id"].as_str().unwrap()
    )
}

async fn put(s: &TestStore, v: &Value) -> (u16, Value) {
    let r = put_fhir(s.url(&path_of(v)), v.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn put_ok(s: &TestStore, v: &Value) {
    let (status, body) = put(s, v).await;
    assert!(
        status == 200 || status == 201,
        "{}: {status} {body}",
        path_of(v)
    );
}

/// Errors' expressions and diagnostics of a 422.
fn errors(oo: &Value) -> Vec<(String, String)> {
    oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| {
            (
                i["expression"][0].as_str().unwrap_or("").to_string(),
                i["diagnostics"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn rejected(s: &TestStore, v: &Value, expression: &str, words: &str) {
    let (status, oo) = put(s, v).await;
    assert_eq!(status, 422, "{}: {oo}", path_of(v));
    assert!(
        errors(&oo)
            .iter()
            .any(|(e, d)| e == expression && d.contains(words)),
        "{expression} / {words} not in {oo}"
    );
}

/// The subject's screening data: Patient, ResearchSubject (screening), BMI, ICRS grade.
async fn screened(s: &TestStore) {
    for f in [
        "Patient-mc-01-001.json",
        "ResearchSubject-mc-01-001.json",
        "Observation-mc-01-001-bmi.json",
        "Observation-mc-01-001-icrs-grade.json",
    ] {
        put_ok(s, &example(f)).await;
    }
}

fn with_status(status: &str) -> Value {
    let mut rs = example("ResearchSubject-mc-01-001.json");
    rs["status"] = json!(status);
    rs
}

#[tokio::test]
async fn trial_profiles_check_units_ranges_ids_and_lots() {
    let s = TestStore::start().await;
    screened(&s).await;
    let mut koos = example("Observation-mc-01-001-koos-pain-v5.json");
    koos["valueQuantity"]["value"] = json!(120);
    rejected(
        &s,
        &koos,
        "Observation.value.ofType(Quantity).value",
        "maximum of 100",
    )
    .await;
    let mut vas = example("Observation-mc-01-001-koos-pain-v5.json");
    vas["id"] = json!("mc-01-001-vas");
    vas["code"] = json!({"coding":[{"system":"http://loinc.org","code":"38214-3"}]});
    vas["valueQuantity"] =
        json!({"value": 4.2, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"});
    rejected(
        &s,
        &vas,
        "Observation.value.ofType(Quantity).code",
        "pain VAS 0-100 mm",
    )
    .await;
    let mut area = example("Observation-mc-01-001-defect-area.json");
    area["valueQuantity"]["value"] = json!(0);
    rejected(
        &s,
        &area,
        "Observation.value.ofType(Quantity).value",
        "defect area",
    )
    .await;
    let mut unlinked = example("Observation-mc-01-001-bmi.json");
    unlinked.as_object_mut().unwrap().remove("extension");
    rejected(&s, &unlinked, "Observation.extension", "required").await;
    let mut named = example("ResearchSubject-mc-01-001.json");
    named["identifier"][0]["value"] = json!("Erika Mustermann");
    rejected(&s, &named, "ResearchSubject.identifier", "").await;
    let mut no_lot = example("Procedure-mc-01-001-implantation.json");
    no_lot["contained"][1]
        .as_object_mut()
        .unwrap()
        .remove("lotNumber");
    rejected(&s, &no_lot, "Procedure.contained", "").await;
    // Nothing of the above was stored.
    let n: Value = get_json(&s.url("Observation?_summary=count")).await;
    assert_eq!(n["total"], 2);
}

#[tokio::test]
async fn enrolment_checks_eligibility_from_the_study_definition() {
    let s = TestStore::start().await;
    screened(&s).await;
    // BMI 36.2 (a newer Observation than the screening one): not below 35.
    let mut bmi = example("Observation-mc-01-001-bmi.json");
    bmi["id"] = json!("mc-01-001-bmi-2");
    bmi["effectiveDateTime"] = json!("2026-03-05");
    bmi["valueQuantity"]["value"] = json!(36.2);
    put_ok(&s, &bmi).await;
    rejected(
        &s,
        &with_status("on-study"),
        "ResearchSubject.status",
        "BMI 36.2",
    )
    .await;
    bmi["valueQuantity"]["value"] = json!(31.0);
    put_ok(&s, &bmi).await;
    // Knee osteoarthritis (ICD-10-GM M17.1) excludes.
    let oa = json!({"resourceType":"Condition","id":"mc-01-001-oa","subject":{"reference":"Patient/mc-01-001"},
        "code":{"coding":[{"system":"http://fhir.de/CodeSystem/bfarm/icd-10-gm","version":"2026","code":"M17.1"}]}});
    put_ok(&s, &oa).await;
    rejected(
        &s,
        &with_status("on-study"),
        "ResearchSubject.status",
        "M17.1",
    )
    .await;
    let mut refuted = oa.clone();
    refuted["verificationStatus"] = json!({"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"refuted"}]});
    put_ok(&s, &refuted).await;
    // Too old: born 1960, consent 2026.
    let mut patient = example("Patient-mc-01-001.json");
    patient["birthDate"] = json!("1960-01-10");
    put_ok(&s, &patient).await;
    rejected(
        &s,
        &with_status("on-study"),
        "ResearchSubject.status",
        "outside 18-60",
    )
    .await;
    put_ok(&s, &example("Patient-mc-01-001.json")).await;
    // All criteria met: enrolled.
    put_ok(&s, &with_status("on-study")).await;
}

#[tokio::test]
async fn enrolment_needs_a_qualifying_defect_grade() {
    let s = TestStore::start().await;
    screened(&s).await;
    let mut grade = example("Observation-mc-01-001-icrs-grade.json");
    grade["valueCodeableConcept"]["coding"][0]["code"] = json!("icrs-2");
    put_ok(&s, &grade).await;
    rejected(
        &s,
        &with_status("on-study"),
        "ResearchSubject.status",
        "no qualifying defect grade",
    )
    .await;
}

#[tokio::test]
async fn status_changes_follow_the_transition_map() {
    let s = TestStore::start().await;
    screened(&s).await;
    put_ok(&s, &with_status("on-study")).await;
    rejected(
        &s,
        &with_status("withdrawn"),
        "ResearchSubject.status",
        "off-study",
    )
    .await;
    rejected(
        &s,
        &with_status("off-study"),
        "ResearchSubject.extension",
        "required",
    )
    .await;
    let mut off = with_status("off-study");
    off["extension"] = json!([{"url":"https://fhir.mesemcart-sponsor.example/StructureDefinition/off-study-reason","valueString":"consent withdrawn after enrolment"}]);
    put_ok(&s, &off).await;
    rejected(
        &s,
        &with_status("on-study"),
        "ResearchSubject.status",
        "nothing (final)",
    )
    .await;
    // Old and new values stay in the history.
    let h: Value = get_json(&s.url("ResearchSubject/mc-01-001/_history")).await;
    let statuses: Vec<&str> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["off-study", "on-study", "screening"]);
}

#[tokio::test]
async fn a_subject_is_implanted_once() {
    let s = TestStore::start().await;
    screened(&s).await;
    let implantation = example("Procedure-mc-01-001-implantation.json");
    put_ok(&s, &implantation).await;
    put_ok(&s, &implantation).await; // updating the same one is fine
    let mut second = implantation.clone();
    second["id"] = json!("mc-01-001-implantation-2");
    rejected(&s, &second, "Procedure.code", "already has an implantation").await;
    // The same through a transaction: refused as a whole.
    let b = json!({"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:0c7c2b36-3b7e-4d0a-9c55-3a1f1e6b0001","resource":second,"request":{"method":"POST","url":"Procedure"}}]});
    let r = post_fhir(&s.base, b.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 422);
}

#[tokio::test]
async fn a_visit_outside_its_window_is_stored_and_recorded_as_a_deviation() {
    let s = TestStore::start().await;
    screened(&s).await;
    put_ok(&s, &example("Procedure-mc-01-001-implantation.json")).await;
    // V5 on day 91: inside days 77-105.
    put_ok(&s, &example("Observation-mc-01-001-koos-pain-v5.json")).await;
    let deviations = || async {
        let b: Value = get_json(&s.url("DetectedIssue?patient=Patient/mc-01-001")).await;
        b["entry"].as_array().cloned().unwrap_or_default()
    };
    assert!(deviations().await.is_empty());
    // Day 130: stored, and a DetectedIssue implicates it.
    let mut late = example("Observation-mc-01-001-koos-pain-v5.json");
    late["id"] = json!("mc-01-001-koos-pain-v5-late");
    late["effectiveDateTime"] = json!("2026-07-24");
    put_ok(&s, &late).await;
    let found = deviations().await;
    assert_eq!(found.len(), 1);
    let d = &found[0]["resource"];
    assert_eq!(
        d["implicated"][0]["reference"],
        "Observation/mc-01-001-koos-pain-v5-late"
    );
    assert!(d["detail"].as_str().unwrap().contains("day 130"), "{d}");
}

#[tokio::test]
async fn validate_takes_a_trial_profile() {
    let s = TestStore::start().await;
    // An Observation without the study link, validated against the trial profile on request.
    let mut koos = example("Observation-mc-01-001-koos-pain-v5.json");
    let o = koos.as_object_mut().unwrap();
    o.remove("meta");
    o.remove("extension");
    let params = json!({"resourceType":"Parameters","parameter":[
        {"name":"resource","resource":koos},
        {"name":"profile","valueUri":"https://fhir.mesemcart-sponsor.example/StructureDefinition/mesemcart-observation"}]});
    let r = post_fhir(s.url("Observation/$validate"), params.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let oo: Value = r.json().await.unwrap();
    assert!(
        errors(&oo)
            .iter()
            .any(|(e, _)| e == "Observation.extension"),
        "{oo}"
    );
}

#[tokio::test]
async fn validate_applies_the_protocol_rules_without_writing() {
    let s = TestStore::start().await;
    screened(&s).await;
    let mut bmi = example("Observation-mc-01-001-bmi.json");
    bmi["id"] = json!("mc-01-001-bmi-2");
    bmi["effectiveDateTime"] = json!("2026-03-05");
    bmi["valueQuantity"]["value"] = json!(36.2);
    put_ok(&s, &bmi).await;
    let r = post_fhir(
        s.url("ResearchSubject/mc-01-001/$validate"),
        with_status("on-study").to_string(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let oo: Value = r.json().await.unwrap();
    assert!(
        errors(&oo)
            .iter()
            .any(|(e, d)| e == "ResearchSubject.status" && d.contains("BMI 36.2")),
        "{oo}"
    );
    // Nothing was written: still screening, version 1.
    let rs = get_json(&s.url("ResearchSubject/mc-01-001")).await;
    assert_eq!(
        (rs["status"].as_str(), rs["meta"]["versionId"].as_str()),
        (Some("screening"), Some("1"))
    );
    // A valid change validates clean.
    bmi["valueQuantity"]["value"] = json!(30.0);
    put_ok(&s, &bmi).await;
    let r = post_fhir(
        s.url("ResearchSubject/mc-01-001/$validate"),
        with_status("on-study").to_string(),
    )
    .send()
    .await
    .unwrap();
    let oo: Value = r.json().await.unwrap();
    assert!(errors(&oo).is_empty(), "{oo}");
}
