//! Validation at the HTTP edge: every write is validated (422 with the whole OperationOutcome)
//! and `$validate` reports the same issues without writing.

use integration_tests::{client, fixture, get_json, post_fhir, put_fhir, TestStore};
use serde_json::{json, Value};

fn observation() -> Value {
    let text = std::fs::read_to_string(fixture("r4-examples/Observation-example.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The eight mutations of the issue, each with the expression the rejection must name.
fn mutations() -> Vec<(&'static str, String, &'static str)> {
    let base = observation();
    let mut out = Vec::new();
    let mut edit = |name: &'static str,
                    expr: &'static str,
                    f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v = base.clone();
        f(v.as_object_mut().unwrap());
        out.push((name, v.to_string(), expr));
    };
    edit("status removed", "Observation.status", &|m| {
        m.remove("status");
    });
    edit("status done", "Observation.status", &|m| {
        m.insert("status".into(), json!("done"));
    });
    edit(
        "value as a string",
        "Observation.value.ofType(Quantity).value",
        &|m| {
            m["valueQuantity"]["value"] = json!("185");
        },
    );
    edit("unknown element", "Observation.colour", &|m| {
        m.insert("colour".into(), json!("blue"));
    });
    edit("code as a string", "Observation.code", &|m| {
        m.insert("code".into(), json!("abc"));
    });
    edit(
        "impossible date",
        "Observation.effective.ofType(dateTime)",
        &|m| {
            m.remove("effectivePeriod");
            m.insert("effectiveDateTime".into(), json!("2016-13-45"));
        },
    );
    edit("two value types", "Observation.value", &|m| {
        m.insert("valueString".into(), json!("185 lbs"));
    });
    edit("empty subject", "Observation.subject", &|m| {
        m.insert("subject".into(), json!({}));
    });
    out
}

fn expressions(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn each_mutation_is_rejected_naming_the_element_and_nothing_is_stored() {
    let s = TestStore::start().await;
    let valid = observation().to_string();
    let r = put_fhir(s.url("Observation/example"), valid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    for (name, body, expr) in mutations() {
        let r = put_fhir(s.url("Observation/example"), body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{name}");
        let oo: Value = r.json().await.unwrap();
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(
            expressions(&oo).iter().any(|e| e == expr),
            "{name}: {expr} not in {oo}"
        );
        // $validate reports the same, with 200.
        let r = post_fhir(s.url("Observation/$validate"), body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let oo: Value = r.json().await.unwrap();
        assert!(
            expressions(&oo).iter().any(|e| e == expr),
            "{name}: $validate {oo}"
        );
    }
    // The stored resource is still version 1.
    let v: Value = get_json(&s.url("Observation/example")).await;
    assert_eq!(v["meta"]["versionId"], "1");
}

#[tokio::test]
async fn duplicate_keys_are_refused_with_their_position() {
    let s = TestStore::start().await;
    let body = "{\"resourceType\":\"Patient\",\n \"gender\":\"male\",\n \"gender\":\"female\"}";
    let r = post_fhir(s.url("Patient"), body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.unwrap();
    let d = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        d.contains("duplicate member \"gender\" at line 3, column 2"),
        "{d}"
    );
}

#[tokio::test]
async fn validate_operation_modes_and_profiles() {
    let s = TestStore::start().await;
    let obs = observation();
    // A valid resource: 200 with an information issue.
    let r = post_fhir(s.url("Observation/$validate"), obs.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["issue"][0]["severity"], "information", "{oo}");
    // As Parameters with a profile the resource does not meet: this body-weight Observation
    // lacks the heart-rate LOINC code 8867-4.
    let params = json!({"resourceType":"Parameters","parameter":[
        {"name":"resource","resource":obs},
        {"name":"profile","valueUri":"http://hl7.org/fhir/StructureDefinition/heartrate"}]});
    let r = post_fhir(s.url("Observation/$validate"), params.to_string())
        .send()
        .await
        .unwrap();
    let oo: Value = r.json().await.unwrap();
    assert!(
        expressions(&oo).contains(&"Observation.code".to_string()),
        "{oo}"
    );
    // Update mode needs the instance's id; delete mode says whether it exists.
    let r = post_fhir(s.url("Observation/other/$validate"), obs.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post_fhir(s.url("Observation/example/$validate?mode=delete"), "")
        .send()
        .await
        .unwrap();
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["issue"][0]["code"], "not-found", "{oo}");
    put_fhir(s.url("Observation/example"), obs.to_string())
        .send()
        .await
        .unwrap();
    let r = post_fhir(s.url("Observation/example/$validate?mode=delete"), "")
        .send()
        .await
        .unwrap();
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["issue"][0]["severity"], "information", "{oo}");
    // GET validates the stored version.
    let r = client()
        .get(s.url("Observation/example/$validate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["issue"][0]["severity"], "information", "{oo}");
}

#[tokio::test]
async fn a_transaction_with_bad_entries_names_every_one_and_writes_nothing() {
    let s = TestStore::start().await;
    let b = json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"fullUrl":"urn:uuid:6a4d1c36-0000-4000-8000-000000000001","resource":{"resourceType":"Observation","status":"done","code":{"text":"KOOS pain"}},"request":{"method":"POST","url":"Observation"}},
        {"fullUrl":"urn:uuid:6a4d1c36-0000-4000-8000-000000000002","resource":{"resourceType":"Patient","gender":"male"},"request":{"method":"POST","url":"Patient"}},
        {"fullUrl":"urn:uuid:6a4d1c36-0000-4000-8000-000000000003","resource":{"resourceType":"Observation","status":"final"},"request":{"method":"POST","url":"Observation"}}
    ]});
    let r = post_fhir(&s.base, b.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let oo: Value = r.json().await.unwrap();
    let ex = expressions(&oo);
    assert!(
        ex.contains(&"Bundle.entry[0].resource.status".to_string()),
        "{oo}"
    );
    assert!(
        ex.contains(&"Bundle.entry[2].resource.code".to_string()),
        "{oo}"
    );
    let n: Value = get_json(&s.url("Patient?_summary=count")).await;
    assert_eq!(n["total"], 0);
}

/// R4: "Applications should not reject resources merely because they contain extensions".
/// An extension of no accepted domain (here the German MII's) is stored as sent; an unknown
/// modifierExtension is refused; `TRIALBRIDGE_EXTENSIONS=strict` refuses both.
#[tokio::test]
async fn unknown_extensions_are_stored_as_sent_unless_they_modify_or_strict_is_asked() {
    let mii = json!([{"url": "https://www.medizininformatik-initiative.de/fhir/core/modul-person/StructureDefinition/Geschlecht-Admin", "valueCoding": {"code": "D"}}]);
    let patient = |member: &str| {
        let mut p = json!({"resourceType": "Patient", "gender": "other"});
        p[member] = mii.clone();
        p.to_string()
    };
    let s = TestStore::start().await;
    let r = post_fhir(s.url("Patient"), patient("extension"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let stored = get_json(&location).await;
    assert_eq!(stored["extension"], mii, "{stored}");
    let r = post_fhir(s.url("Patient"), patient("modifierExtension"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let strict = TestStore::start_with(|c| {
        c.validation.extensions = trialbridge_validation::ExtensionPolicy::Strict
    })
    .await;
    let r = post_fhir(strict.url("Patient"), patient("extension"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(expressions(&oo), ["Patient.extension[0]"], "{oo}");
}
