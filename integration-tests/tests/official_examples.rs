//! The official R4 examples survive a round trip (the one invalid example is rejected), and the
//! official transaction example behaves as the specification says.

use integration_tests::{
    client, fixture, get_text, post_fhir, put_fhir, without_meta, TestStore, INVALID_EXAMPLE,
};
use serde_json::{json, Value};

fn examples() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixture("r4-examples")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with("Bundle-") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        out.push((name, serde_json::from_str(&text).unwrap()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn put_then_get_returns_the_same_json() {
    let s = TestStore::start().await;
    let all = examples();
    assert_eq!(all.len(), 117);
    for (name, v) in &all {
        let path = format!(
            "{}/{}",
            v["resourceType"].as_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        let text = std::fs::read(fixture(&format!("r4-examples/{name}"))).unwrap();
        let r = put_fhir(s.url(&path), text).send().await.unwrap();
        if name == INVALID_EXAMPLE {
            assert_eq!(r.status(), 422);
            let oo: Value = r.json().await.unwrap();
            assert_eq!(
                oo["issue"][0]["expression"][0], "Observation.performer[0]",
                "{oo}"
            );
            assert!(oo["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .contains("Encounter"));
            continue;
        }
        assert_eq!(r.status(), 201, "{name}: {}", r.text().await.unwrap());
        let got: Value = integration_tests::get_json(&s.url(&path)).await;
        // serde_json here keeps number text (arbitrary_precision), so 1.50 != 1.5.
        assert_eq!(without_meta(&got), without_meta(v), "{name}");
    }
}

#[tokio::test]
async fn decimal_precision_is_kept_byte_for_byte() {
    let s = TestStore::start().await;
    let text = std::fs::read_to_string(fixture("r4-examples/Observation-decimal.json")).unwrap();
    put_fhir(s.url("Observation/decimal"), text.clone())
        .send()
        .await
        .unwrap();
    let got = get_text(&s.url("Observation/decimal")).await;
    for value_text in [
        "1.0",
        "1.00",
        "1E-22",
        "1000000000000000000",
        "1.000000000000000000E-245",
        "-1.000000000000000000E+245",
    ] {
        assert!(
            text.contains(&format!("\"value\": {value_text},")),
            "fixture has {value_text}"
        );
        assert!(
            got.contains(&format!("\"value\":{value_text},")),
            "{value_text} in {got}"
        );
    }
    // Exponent spelling and trailing zeros too.
    let body = r#"{"resourceType":"Observation","id":"e","status":"final","code":{"text":"x"},"valueQuantity":{"value":1E-22},"component":[{"code":{"text":"y"},"valueQuantity":{"value":1.00}}]}"#;
    put_fhir(s.url("Observation/e"), body).send().await.unwrap();
    let got = get_text(&s.url("Observation/e")).await;
    assert!(
        got.contains(r#""valueQuantity":{"value":1E-22}"#) && got.contains(r#"{"value":1.00}"#),
        "{got}"
    );
}

fn transaction_example() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("r4-examples/Bundle-bundle-transaction.json")).unwrap(),
    )
    .unwrap()
}

async fn count_patients(s: &TestStore) -> u64 {
    let v: Value = integration_tests::get_json(&s.url("Patient?_summary=count")).await;
    v["total"].as_u64().unwrap()
}

#[tokio::test]
async fn official_transaction_fails_as_a_whole_naming_each_failing_entry() {
    let s = TestStore::start().await;
    let r = post_fhir(&s.base, transaction_example().to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let exprs: Vec<String> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| {
            i["expression"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_string())
        })
        .collect();
    // In processing order: the $lookup (a POST), the If-Match on Patient/123a (a PUT), the read
    // of the missing Patient/12334 (a GET).
    let named: Vec<&str> = exprs
        .iter()
        .filter(|e| e.starts_with("Bundle.entry["))
        .map(String::as_str)
        .collect();
    assert_eq!(
        named,
        [
            "Bundle.entry[7].request.url",
            "Bundle.entry[4].request.ifMatch",
            "Bundle.entry[9].request.url"
        ],
        "{oo}"
    );
    assert_eq!(count_patients(&s).await, 0, "nothing left behind");
    let h: Value = integration_tests::get_json(&s.url("_history")).await;
    assert!(h.get("entry").is_none(), "no version was written: {h}");
}

#[tokio::test]
async fn official_transaction_without_the_failing_entries_succeeds_and_is_idempotent_for_if_none_exist(
) {
    let s = TestStore::start().await;
    let mut b = transaction_example();
    let entries: Vec<Value> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(i, _)| ![4, 7, 9].contains(i))
        .map(|(_, e)| e.clone())
        .collect();
    b["entry"] = json!(entries);
    let r = post_fhir(format!("{}/", s.base), b.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let resp: Value = r.json().await.unwrap();
    assert_eq!(resp["type"], "transaction-response");
    let statuses: Vec<&str> = resp["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "201 Created",
            "201 Created",
            "201 Created",
            "204 No Content",
            "204 No Content",
            "200 OK"
        ]
    );
    // The GET Patient?name=peter runs last and sees the four Patients of this transaction.
    assert_eq!(resp["entry"][6]["resource"]["total"], 4);
    assert_eq!(count_patients(&s).await, 4);
    let put = client().get(s.url("Patient/123")).send().await.unwrap();
    assert_eq!(put.status(), 200);

    // Second run: ifNoneExist finds the Patient of the first run, no duplicate.
    let r = post_fhir(&s.base, b.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let resp2: Value = r.json().await.unwrap();
    assert_eq!(resp2["entry"][1]["response"]["status"], "200 OK");
    assert_eq!(
        resp2["entry"][1]["response"]["location"],
        resp["entry"][1]["response"]["location"]
    );
    let dup: Value = integration_tests::get_json(
        &s.url("Patient?identifier=http:/example.org/fhir/ids|234234&_summary=count"),
    )
    .await;
    assert_eq!(dup["total"], 1);
}

#[tokio::test]
async fn transaction_rewrites_urn_uuid_and_conditional_references() {
    let s = TestStore::start().await;
    let org = json!({"resourceType":"Organization","id":"site-01","identifier":[{"system":"urn:site","value":"01"}],"name":"Site 01"});
    put_fhir(s.url("Organization/site-01"), org.to_string())
        .send()
        .await
        .unwrap();
    let b = json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"fullUrl":"urn:uuid:2b0c3c9e-1111-4e52-8a3c-000000000001","resource":{"resourceType":"Observation","status":"final","code":{"text":"BMI"},"valueQuantity":{"value":24.5},
            "subject":{"reference":"urn:uuid:2b0c3c9e-1111-4e52-8a3c-000000000002"},"performer":[{"reference":"Organization?identifier=urn:site|01"}]},
         "request":{"method":"POST","url":"Observation"}},
        {"fullUrl":"urn:uuid:2b0c3c9e-1111-4e52-8a3c-000000000002","resource":{"resourceType":"Patient","identifier":[{"system":"urn:subj","value":"MC-1"}]},
         "request":{"method":"POST","url":"Patient"}}
    ]});
    let r: Value = post_fhir(&s.base, b.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let obs_loc = r["entry"][0]["response"]["location"].as_str().unwrap();
    let pat_loc = r["entry"][1]["response"]["location"].as_str().unwrap();
    let o: Value = integration_tests::get_json(&s.url(obs_loc)).await;
    let pat_ref = pat_loc.split("/_history").next().unwrap();
    assert_eq!(o["subject"]["reference"], pat_ref);
    assert_eq!(o["performer"][0]["reference"], "Organization/site-01");

    // A conditional reference that matches nothing fails the whole transaction.
    let bad = json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient?identifier=urn:subj|nobody"}},"request":{"method":"POST","url":"Observation"}}]});
    let r = post_fhir(&s.base, bad.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let oo: Value = r.json().await.unwrap();
    assert!(oo.to_string().contains("Bundle.entry[0].resource"), "{oo}");
}

#[tokio::test]
async fn batch_entries_are_independent() {
    let s = TestStore::start().await;
    let b = json!({"resourceType":"Bundle","type":"batch","entry":[
        {"resource":{"resourceType":"Patient","id":"b1"},"request":{"method":"PUT","url":"Patient/b1"}},
        {"request":{"method":"GET","url":"Patient/missing"}},
        {"resource":{"resourceType":"Observation","id":"x"},"request":{"method":"PUT","url":"Patient/b2"}},
        {"request":{"method":"GET","url":"Patient/b1"}},
        {"request":{"method":"GET","url":"Patient/b1/_history/1"}},
        {"request":{"method":"GET","url":"Patient/b1/_history/2"}}
    ]});
    let r: Value = post_fhir(&s.base, b.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["type"], "batch-response");
    let st: Vec<&str> = r["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        st,
        [
            "201 Created",
            "404 Not Found",
            "400 Bad Request",
            "200 OK",
            "200 OK",
            "404 Not Found"
        ]
    );
    assert_eq!(
        r["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(r["entry"][3]["resource"]["id"], "b1");
    let bad = post_fhir(
        &s.base,
        json!({"resourceType":"Bundle","type":"collection"}).to_string(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    let oo: Value = bad.json().await.unwrap();
    assert_eq!(oo["issue"][0]["expression"][0], "Bundle.type");
}
