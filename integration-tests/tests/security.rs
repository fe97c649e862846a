//! Security at the HTTP edge: tokens, roles and scopes, site isolation on every path (direct and
//! indirect), the audit trail (every request, refusals included, hash-chained, tamper-evident),
//! reasons for change, and the monitor's source data verification walk.

use std::time::Duration;

use integration_tests::{client_with, repo_root, token, Role, TestStore};
use serde_json::{json, Value};

const S1: &str = "mesemcart-site-01";
const S2: &str = "mesemcart-site-02";

fn site_ext(site: &str) -> Value {
    json!([{"url": "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy",
            "valueReference": {"reference": format!("ResearchStudy/{site}")}}])
}

fn patient(id: &str, gender: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "gender": gender})
}

/// A vital sign (weight in kg, height in cm) as R4's vital-signs profiles want it.
fn observation(id: &str, patient: &str, code: &str, value: f64) -> Value {
    let unit = if code == "8302-2" { "cm" } else { "kg" };
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "subject": {"reference": format!("Patient/{patient}")},
           "effectiveDateTime": "2026-03-02",
           "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
}

/// A caller: a label and its HTTP client.
struct Who {
    name: &'static str,
    http: reqwest::Client,
}

fn who(name: &'static str, role: Role, sites: &[&str], scope: &str) -> Who {
    Who {
        name,
        http: client_with(&token(role, sites, scope)),
    }
}

async fn send(w: &Who, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    integration_tests::send_fhir(&w.http, method, url, body, "correction").await
}

async fn get(w: &Who, url: String) -> (u16, Value) {
    send(w, reqwest::Method::GET, url, None).await
}

async fn put(w: &Who, s: &TestStore, v: Value) -> u16 {
    let path = format!(
        "{}/{}",
        v["resourceType"].as_str().unwrap(),
        v["id"].as_str().unwrap()
    );
    send(w, reqwest::Method::PUT, s.url(&path), Some(v)).await.0
}

/// `Type/id` of the entries of a Bundle, with their search mode.
fn entries(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let r = &e["resource"];
            Some(format!(
                "{}/{}",
                r["resourceType"].as_str()?,
                r["id"].as_str()?
            ))
        })
        .collect()
}

/// Two sites' data written by their own site tokens, plus a shared definition.
async fn two_sites(s: &TestStore) -> (Who, Who) {
    let site1 = who("site-01", Role::Site, &[S1], "");
    let site2 = who("site-02", Role::Site, &[S2], "");
    for (w, n, site) in [(&site1, "1", S1), (&site2, "2", S2)] {
        assert_eq!(
            put(w, s, patient(&format!("mc-0{n}-p"), "female")).await,
            201
        );
        let rs = json!({"resourceType": "ResearchSubject", "id": format!("mc-0{n}-rs"), "status": "candidate",
            "identifier": [{"system": "https://fhir.mesemcart-sponsor.example/sid/subject", "value": format!("MC-0{n}-001")}],
            "study": {"reference": format!("ResearchStudy/{site}")},
            "individual": {"reference": format!("Patient/mc-0{n}-p")}});
        let (st, oo) = send(
            w,
            reqwest::Method::PUT,
            s.url(&format!("ResearchSubject/mc-0{n}-rs")),
            Some(rs),
        )
        .await;
        assert_eq!(st, 201, "{oo}");
        let mut o = observation(
            &format!("mc-0{n}-o"),
            &format!("mc-0{n}-p"),
            "29463-7",
            70.0,
        );
        o["identifier"] = json!([{"system": "urn:test", "value": format!("obs-{n}")}]);
        assert_eq!(put(w, s, o).await, 201);
    }
    // Site 2 may not attach a result to site 1's patient (it knows the id)...
    assert_eq!(
        put(&site2, s, observation("o2x", "mc-01-p", "8302-2", 172.0)).await,
        403
    );
    // ...but a privileged loader can link across sites (a data error, or a transfer): site 1
    // must still not see site 2's result, through any path.
    let mut cross = observation("o2x", "mc-01-p", "8302-2", 172.0);
    cross["extension"] = site_ext(S2);
    cross["valueQuantity"] =
        json!({"value": 172, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"});
    let system = Who {
        name: "system",
        http: integration_tests::client(),
    };
    let (st, oo) = send(
        &system,
        reqwest::Method::PUT,
        s.url("Observation/o2x"),
        Some(cross),
    )
    .await;
    assert_eq!(st, 201, "{oo}");
    let admin = who("admin", Role::Admin, &[], "");
    let pd = json!({"resourceType": "PlanDefinition", "id": "pd", "status": "active"});
    assert_eq!(put(&admin, s, pd).await, 201);
    (site1, site2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_by_interaction_by_site() {
    let s = TestStore::start().await;
    let (site1, site2) = two_sites(&s).await;
    let mon1 = who("monitor of site 01", Role::Monitor, &[S1], "");
    let mon12 = who("monitor of both", Role::Monitor, &[S1, S2], "");
    let wh = who("warehouse", Role::Warehouse, &[], "");
    let admin = who("admin", Role::Admin, &[], "");
    let narrow = who(
        "site-01, Observation.rs only",
        Role::Site,
        &[S1],
        "system/Observation.rs",
    );
    let callers = [&site1, &site2, &mon1, &mon12, &wh, &admin, &narrow];

    // Reads: (path, expected status per caller in the order above).
    let reads: &[(&str, [u16; 7])] = &[
        ("Observation/mc-01-o", [200, 404, 200, 200, 200, 403, 200]),
        ("Observation/mc-02-o", [404, 200, 404, 200, 200, 403, 404]),
        ("Observation/o2x", [404, 200, 404, 200, 200, 403, 404]),
        (
            "Observation/mc-02-o/_history/1",
            [404, 200, 404, 200, 200, 403, 404],
        ),
        (
            "Observation/mc-02-o/_history",
            [404, 200, 404, 200, 200, 403, 404],
        ),
        ("Patient/mc-01-p", [200, 404, 200, 200, 200, 403, 403]),
        ("PlanDefinition/pd", [200, 200, 200, 200, 200, 200, 403]),
        (
            "Observation/mc-02-o/$validate",
            [404, 200, 404, 200, 200, 403, 404],
        ),
        ("AuditEvent?_count=1", [403, 403, 200, 200, 403, 200, 403]),
    ];
    for (path, expected) in reads {
        for (w, want) in callers.iter().zip(expected) {
            let (got, body) = get(w, s.url(path)).await;
            assert_eq!(got, *want, "{} GET {path}: {body}", w.name);
        }
    }

    // Searches: what each caller finds (None: refused with 403).
    type Finds = [Result<&'static [&'static str], u16>; 7];
    let searches: &[(&str, Finds)] = &[
        (
            "Observation?_count=50",
            [
                Ok(&["Observation/mc-01-o"]),
                Ok(&["Observation/mc-02-o", "Observation/o2x"]),
                Ok(&["Observation/mc-01-o"]),
                Ok(&[
                    "Observation/mc-01-o",
                    "Observation/mc-02-o",
                    "Observation/o2x",
                ]),
                Ok(&[
                    "Observation/mc-01-o",
                    "Observation/mc-02-o",
                    "Observation/o2x",
                ]),
                Err(403),
                Ok(&["Observation/mc-01-o"]),
            ],
        ),
        // A chain through the patient: site 1 must not learn of o2x (which points at p1).
        (
            "Observation?subject:Patient.gender=female",
            [
                Ok(&["Observation/mc-01-o"]),
                // o2x's patient is site 1's: site 2 cannot match through it either.
                Ok(&["Observation/mc-02-o"]),
                Ok(&["Observation/mc-01-o"]),
                Ok(&[
                    "Observation/mc-01-o",
                    "Observation/mc-02-o",
                    "Observation/o2x",
                ]),
                Ok(&[
                    "Observation/mc-01-o",
                    "Observation/mc-02-o",
                    "Observation/o2x",
                ]),
                Err(403),
                Ok(&["Observation/mc-01-o"]),
            ],
        ),
        // _include of a patient in another site is left out.
        (
            "Observation?_id=o2x&_include=Observation:subject",
            [
                Ok(&[]),
                Ok(&["Observation/o2x"]),
                Ok(&[]),
                Ok(&["Observation/o2x", "Patient/mc-01-p"]),
                Ok(&["Observation/o2x", "Patient/mc-01-p"]),
                Err(403),
                Ok(&[]),
            ],
        ),
        // _revinclude does not bring another site's results for one's own patient.
        (
            "Patient?_id=mc-01-p&_revinclude=Observation:subject",
            [
                Ok(&["Patient/mc-01-p", "Observation/mc-01-o"]),
                Ok(&[]),
                Ok(&["Patient/mc-01-p", "Observation/mc-01-o"]),
                Ok(&["Patient/mc-01-p", "Observation/mc-01-o", "Observation/o2x"]),
                Ok(&["Patient/mc-01-p", "Observation/mc-01-o", "Observation/o2x"]),
                Err(403),
                Err(403),
            ],
        ),
        // _has: p1 has a body height only through site 2's o2x.
        (
            "Patient?_has:Observation:subject:code=8302-2",
            [
                Ok(&[]),
                Ok(&[]),
                Ok(&[]),
                Ok(&["Patient/mc-01-p"]),
                Ok(&["Patient/mc-01-p"]),
                Err(403),
                Err(403),
            ],
        ),
        (
            "Observation/_history",
            [
                Ok(&["Observation/mc-01-o"]),
                Ok(&["Observation/mc-02-o", "Observation/o2x"]),
                Ok(&["Observation/mc-01-o"]),
                Ok(&[
                    "Observation/mc-01-o",
                    "Observation/mc-02-o",
                    "Observation/o2x",
                ]),
                Ok(&[
                    "Observation/mc-01-o",
                    "Observation/mc-02-o",
                    "Observation/o2x",
                ]),
                Err(403),
                Ok(&["Observation/mc-01-o"]),
            ],
        ),
        (
            "Patient/mc-01-p/Observation",
            [
                Ok(&["Observation/mc-01-o"]),
                // The compartment of a patient site 2 does not see is not found.
                Err(404),
                Ok(&["Observation/mc-01-o"]),
                Ok(&["Observation/mc-01-o", "Observation/o2x"]),
                Ok(&["Observation/mc-01-o", "Observation/o2x"]),
                Err(403),
                Err(403),
            ],
        ),
    ];
    for (path, expected) in searches {
        for (w, want) in callers.iter().zip(expected) {
            let (got, body) = get(w, s.url(path)).await;
            match want {
                Err(code) => assert_eq!(got, *code, "{} GET {path}: {body}", w.name),
                Ok(ids) => {
                    assert_eq!(got, 200, "{} GET {path}: {body}", w.name);
                    let mut found = entries(&body);
                    found.sort();
                    let mut ids: Vec<String> = ids.iter().map(|x| x.to_string()).collect();
                    ids.sort();
                    if path.contains("_history") {
                        found.dedup();
                    }
                    assert_eq!(found, ids, "{} GET {path}", w.name);
                }
            }
        }
    }

    // _total counts only what the caller sees.
    for (w, n) in [(&site1, 1), (&site2, 2), (&wh, 3)] {
        let (_, b) = get(w, s.url("Observation?_summary=count")).await;
        assert_eq!(b["total"], n, "{} _total", w.name);
    }
    // System-level search and history.
    let (_, b) = get(&site1, s.url("?_type=Observation,Patient")).await;
    let mut found = entries(&b);
    found.sort();
    assert_eq!(found, ["Observation/mc-01-o", "Patient/mc-01-p"]);
    let (_, b) = get(&site1, s.url("_history?_count=100")).await;
    assert!(
        entries(&b)
            .iter()
            .all(|e| !e.ends_with("mc-02-o") && !e.ends_with("o2x") && !e.ends_with("mc-02-p")),
        "{b}"
    );
    assert_eq!(get(&admin, s.url("_history")).await.0, 403);

    // Writes.
    let o = || observation("mc-01-new", "mc-01-p", "29463-7", 71.0);
    let verifier = json!({"resourceType": "Provenance", "id": "mc-01-verif",
        "target": [{"reference": "Observation/mc-01-o"}], "recorded": "2026-03-03T10:00:00Z",
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "verifier"}]},
                   "who": {"display": "a monitor"}}]});
    let deviation = json!({"resourceType": "DetectedIssue", "id": "mc-01-dev", "status": "final",
        "code": {"coding": [{"system": "https://fhir.mesemcart-sponsor.example/CodeSystem/mesemcart-measures", "code": "protocol-deviation"}]},
        "patient": {"reference": "Patient/mc-01-p"}});
    let writes: &[(&str, &str, Value, [u16; 7])] = &[
        // A site writes its own clinical data; monitors, warehouse and admin do not.
        (
            "PUT",
            "Observation/mc-01-new",
            o(),
            [201, 403, 403, 403, 403, 403, 403],
        ),
        // Into another site's namespace, or outside every namespace.
        (
            "PUT",
            "Observation/mc-02-new",
            observation("mc-02-new", "mc-02-p", "29463-7", 71.0),
            [403, 201, 403, 403, 403, 403, 403],
        ),
        (
            "PUT",
            "Observation/unprefixed",
            observation("unprefixed", "mc-01-p", "29463-7", 71.0),
            [403, 403, 403, 403, 403, 403, 403],
        ),
        // Monitor evidence: nobody writes it through the API.
        (
            "PUT",
            "Provenance/mc-01-verif",
            verifier,
            [403, 403, 403, 403, 403, 403, 403],
        ),
        (
            "PUT",
            "DetectedIssue/mc-01-dev",
            deviation,
            [403, 403, 403, 403, 403, 403, 403],
        ),
        // Site 1 may not overwrite site 2's resource, nor claim another site in the content.
        (
            "PUT",
            "Observation/mc-02-o",
            observation("mc-02-o", "mc-02-p", "29463-7", 1.0),
            [403, 200, 403, 403, 403, 403, 403],
        ),
        (
            "DELETE",
            "Observation/o2x",
            Value::Null,
            [403, 204, 403, 403, 403, 403, 403],
        ),
        (
            "PUT",
            "PlanDefinition/pd",
            json!({"resourceType": "PlanDefinition", "id": "pd", "status": "retired"}),
            [403, 403, 403, 403, 403, 200, 403],
        ),
        (
            "POST",
            "AuditEvent",
            json!({"resourceType": "AuditEvent"}),
            [403, 403, 403, 403, 403, 403, 403],
        ),
    ];
    for (method, path, body, expected) in writes {
        for (w, want) in callers.iter().zip(expected) {
            let body = if body.is_null() {
                None
            } else {
                Some(body.clone())
            };
            let (got, oo) = send(w, method.parse().unwrap(), s.url(path), body).await;
            assert_eq!(got, *want, "{} {method} {path}: {oo}", w.name);
        }
    }
    let mut claims_other = observation("claim", "mc-01-p", "29463-7", 1.0);
    claims_other["extension"] = site_ext(S2);
    assert_eq!(put(&site1, &s, claims_other).await, 403);

    // Transactions: every entry is checked; a read of another site's resource is not found.
    let txn =
        |entries: Value| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let (st, oo) = send(
        &site1,
        reqwest::Method::POST,
        s.base.clone(),
        Some(txn(json!([
        {"request": {"method": "GET", "url": "Observation/mc-02-o"}}]))),
    )
    .await;
    assert_eq!(st, 404, "{oo}");
    let (st, oo) = send(&site1, reqwest::Method::POST, s.base.clone(), Some(txn(json!([
        {"resource": observation("mc-02-o", "mc-02-p", "29463-7", 2.0), "request": {"method": "PUT", "url": "Observation/mc-02-o"}}])))).await;
    assert_eq!(st, 403, "{oo}");
    assert!(oo.to_string().contains("Bundle.entry[0]"), "{oo}");
    let (st, _) = send(&wh, reqwest::Method::POST, s.base.clone(), Some(txn(json!([
        {"resource": observation("w", "mc-02-p", "29463-7", 2.0), "request": {"method": "PUT", "url": "Observation/w"}}])))).await;
    assert_eq!(st, 403);
    // A conditional update by site 1 matching site 2's identifier does not touch site 2's.
    let mut cu = observation("ignored", "mc-01-p", "29463-7", 5.0);
    cu.as_object_mut().unwrap().remove("id");
    let (st, created) = send(
        &site1,
        reqwest::Method::PUT,
        s.url("Observation?identifier=urn:test|obs-2"),
        Some(cu),
    )
    .await;
    assert_eq!(st, 201, "{created}");
    assert_ne!(created["id"], "mc-02-o");
    let (_, o2) = get(&site2, s.url("Observation/mc-02-o")).await;
    assert_eq!(
        o2["valueQuantity"]["value"], 1.0,
        "site 2's own update, not site 1's"
    );

    // Bulk export: warehouse only.
    for (w, want) in [(&site1, 403), (&mon1, 403), (&admin, 403), (&wh, 202)] {
        let r = w
            .http
            .get(s.url("$export"))
            .header("prefer", "respond-async")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{} $export", w.name);
    }
}

async fn audit_events(s: &TestStore, min: usize, filter: impl Fn(&Value) -> bool) -> Vec<Value> {
    let admin = who("admin", Role::Admin, &[], "");
    // Audit events of reads and refusals are committed with the next batch: poll briefly.
    for _ in 0..100 {
        let mut all = Vec::new();
        let mut url = Some(s.url("AuditEvent?_count=1000"));
        while let Some(u) = url {
            let (st, b) = get(&admin, u).await;
            assert_eq!(st, 200, "{b}");
            all.extend(
                b["entry"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e["resource"].clone()),
            );
            url = integration_tests::next_link(&b);
        }
        let hits: Vec<Value> = all.into_iter().filter(|e| filter(e)).collect();
        if hits.len() >= min {
            return hits;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {min} matching audit events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_audited() {
    let s = TestStore::start().await;
    let good = token(Role::Warehouse, &[], "system/Observation.rs");
    let stranger = {
        let dir = tempfile::tempdir().unwrap();
        trialbridge_auth::DevIssuer::load_or_create(
            dir.path(),
            trial_store::config::LOCAL_ISSUER,
            "trialbridge",
        )
        .unwrap()
    };
    let req = |role, _aud: &str, lifetime| trialbridge_auth::TokenRequest {
        subject: "intruder".into(),
        role,
        sites: vec![],
        scope: "system/*.rs".into(),
        lifetime_seconds: lifetime,
    };
    let wrong_aud = {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            integration_tests::test_issuer().path(),
            dir.path().join(trialbridge_auth::DEV_KEY_FILE),
        )
        .unwrap();
        trialbridge_auth::DevIssuer::load_or_create(
            dir.path(),
            trial_store::config::LOCAL_ISSUER,
            "another-server",
        )
        .unwrap()
    };
    let forged = {
        // The test key's header and claims, another key's signature.
        let t = stranger.mint(&req(Role::Warehouse, "", 600));
        let g = integration_tests::test_issuer().mint(&req(Role::Warehouse, "", 600));
        let mut parts: Vec<&str> = g.split('.').collect();
        parts[2] = t.split('.').nth(2).unwrap();
        parts.join(".")
    };
    let expired = integration_tests::test_issuer().mint(&req(Role::Warehouse, "", -600));
    let alg_none = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(r#"{"alg":"none","typ":"JWT"}"#),
            good.split('.').nth(1).unwrap()
        )
    };
    let cases: [(&str, Option<String>, u16); 6] = [
        ("no token", None, 401),
        ("bad signature", Some(forged), 401),
        (
            "wrong aud",
            Some(wrong_aud.mint(&req(Role::Warehouse, "", 600))),
            401,
        ),
        ("expired", Some(expired), 401),
        ("alg none", Some(alg_none), 401),
        ("scope for another type", Some(good.clone()), 403),
    ];
    for (name, t, want) in &cases {
        let mut r = integration_tests::client_with("x").get(s.url("Patient?_count=1"));
        r = match t {
            Some(t) => r.bearer_auth(t),
            None => reqwest::Client::new().get(s.url("Patient?_count=1")),
        };
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), *want, "{name}");
        if *want == 401 {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .map(|h| h.to_str().unwrap().to_string())
                .unwrap_or_default();
            assert!(challenge.starts_with("Bearer "), "{name}: {challenge}");
        }
        let oo: Value = resp.json().await.unwrap();
        assert_eq!(oo["resourceType"], "OperationOutcome", "{name}");
    }
    // The capability statement and health checks stay open.
    assert_eq!(reqwest::get(s.url("metadata")).await.unwrap().status(), 200);
    // Every refusal is in the audit trail: five 401s and the 403.
    let refused = audit_events(&s, 6, |e| e["outcome"] == "4").await;
    assert!(
        refused
            .iter()
            .filter(|e| e["outcomeDesc"].as_str().unwrap().starts_with("HTTP 401"))
            .count()
            >= 5,
        "{refused:#?}"
    );
    assert!(
        refused.iter().any(
            |e| e["outcomeDesc"].as_str().unwrap().starts_with("HTTP 403")
                && e.pointer("/agent/0/who/identifier/value") == Some(&json!("test-warehouse"))
        ),
        "{refused:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasons_for_change_are_required_and_recorded() {
    let s = TestStore::start().await;
    let site1 = who("site-01", Role::Site, &[S1], "");
    let plain = client_with(&token(Role::Site, &[S1], ""));
    let put_plain = |v: Value| {
        let url = s.url(&format!("Observation/{}", v["id"].as_str().unwrap()));
        plain
            .put(url)
            .header("content-type", "application/fhir+json")
            .body(v.to_string())
            .send()
    };
    // Creating needs no reason.
    assert_eq!(
        put_plain(observation("mc-01-r", "mc-01-p", "29463-7", 70.0))
            .await
            .unwrap()
            .status(),
        201
    );
    // Changing does.
    let r = put_plain(observation("mc-01-r", "mc-01-p", "29463-7", 71.0))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(
        oo["issue"][0]["expression"][0], "X-Reason-For-Change",
        "{oo}"
    );
    let r = plain
        .delete(s.url("Observation/mc-01-r"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // With the header.
    let r = plain
        .put(s.url("Observation/mc-01-r"))
        .header("content-type", "application/fhir+json")
        .header("x-reason-for-change", "transcription error corrected")
        .body(observation("mc-01-r", "mc-01-p", "29463-7", 71.0).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // With a Provenance in the same transaction.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("mc-01-r", "mc-01-p", "29463-7", 72.0), "request": {"method": "PUT", "url": "Observation/mc-01-r"}},
        {"fullUrl": "urn:uuid:0d6e3f0a-1b2c-4d5e-8f90-a1b2c3d4e5f6",
         "resource": {"resourceType": "Provenance", "target": [{"reference": "Observation/mc-01-r"}], "recorded": "2026-03-03T10:00:00Z",
                      "reason": [{"text": "late lab correction"}], "agent": [{"who": {"display": "lab system"}}]},
         "request": {"method": "POST", "url": "Provenance"}}]});
    let r = plain
        .post(&s.base)
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Old and new values stay in the history, and the audit trail says who, when and why.
    let (_, h) = get(&site1, s.url("Observation/mc-01-r/_history")).await;
    let values: Vec<f64> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["valueQuantity"]["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [72.0, 71.0, 70.0]);
    let reasons: Vec<String> = audit_events(&s, 3, |e| {
        e.to_string().contains("Observation/mc-01-r/_history/")
    })
    .await
    .iter()
    .filter_map(|e| {
        e.pointer("/entity/0/detail/0/valueString")
            .and_then(Value::as_str)
            .map(String::from)
    })
    .collect();
    assert!(
        reasons.contains(&"transcription error corrected".to_string()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"late lab correction".to_string()),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_audit_row_is_found_by_audit_verify() {
    let s = TestStore::start().await;
    let (site1, _) = two_sites(&s).await;
    for _ in 0..5 {
        get(&site1, s.url("Observation/mc-01-o")).await;
    }
    audit_events(&s, 10, |_| true).await;
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"))
            .args(["audit", "verify"])
            .env("TRIALBRIDGE_DATABASE_URL", &s.database_url)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("audit trail intact"));
    // Someone with database access edits event 4 (the triggers refuse it until dropped).
    let edit = "UPDATE audit_event SET body = body || ' ' WHERE seq = 4";
    if s.database_url.starts_with("sqlite:") {
        let c = rusqlite::Connection::open(s.dir.path().join("store.db")).unwrap();
        assert!(c.execute(edit, []).is_err());
        c.execute_batch(&format!("DROP TRIGGER audit_event_no_update; {edit};"))
            .unwrap();
    } else {
        let mut c = integration_tests::pg(&s.database_url).await;
        assert!(sqlx::raw_sql(edit).execute(&mut c).await.is_err());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only; {edit};"
        )))
        .execute(&mut c)
        .await
        .unwrap();
    }
    let bad = verify();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("event 4 (AuditEvent/4"), "{err}");
}

fn example(name: &str) -> Value {
    let path = repo_root().join("studies/mesemcart/examples").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_verifies_one_subject_from_screening_to_month_24() {
    let s = TestStore::start().await;
    let site = who("site-01", Role::Site, &[S1], "");
    let ok = |st: u16| assert!(st == 200 || st == 201, "{st}");
    // Screening, as the site gateway sends it: each value with the Provenance of its message.
    for f in [
        "Patient-mc-01-001.json",
        "ResearchSubject-mc-01-001.json",
        "Observation-mc-01-001-bmi.json",
        "Observation-mc-01-001-icrs-grade.json",
    ] {
        ok(put(&site, &s, example(f)).await);
    }
    let prov = |id: &str, target: &str, msg: &str| {
        json!({"resourceType": "Provenance", "id": id,
        "target": [{"reference": target}], "recorded": "2026-03-02T09:15:00Z",
        "agent": [{"who": {"display": "trialbridge site gateway, site-01"}}],
        "entity": [{"role": "source", "what": {"identifier": {"system": "urn:mesemcart:site-01:hl7v2-message", "value": msg}}}]})
    };
    ok(put(
        &site,
        &s,
        prov("mc-01-src-bmi", "Observation/mc-01-001-bmi", "LIS|MSG0001"),
    )
    .await);
    // Enrolment, implantation (day 0), the KOOS at month 3 and at month 24.
    let mut rs = example("ResearchSubject-mc-01-001.json");
    rs["status"] = json!("on-study");
    ok(put(&site, &s, rs).await);
    ok(put(&site, &s, example("Procedure-mc-01-001-implantation.json")).await);
    ok(put(
        &site,
        &s,
        example("Observation-mc-01-001-koos-pain-v5.json"),
    )
    .await);
    let mut m24 = example("Observation-mc-01-001-koos-pain-v5.json");
    m24["id"] = json!("mc-01-001-koos-pain-m24");
    m24["effectiveDateTime"] = json!("2028-03-16");
    m24["extension"][1]["valueCanonical"] =
        json!("https://fhir.mesemcart-sponsor.example/PlanDefinition/mesemcart-visit-v9");
    m24["valueQuantity"]["value"] = json!(90);
    ok(put(&site, &s, m24.clone()).await);
    // A correction of the month-24 value, with its reason.
    m24["valueQuantity"]["value"] = json!(88);
    let (st, body) = send(
        &site,
        reqwest::Method::PUT,
        s.url("Observation/mc-01-001-koos-pain-m24"),
        Some(m24),
    )
    .await;
    assert_eq!(st, 200, "{body}");

    let mon = who("monitor", Role::Monitor, &[S1], "");
    let other = who("monitor of site 02", Role::Monitor, &[S2], "");
    assert_eq!(
        get(&other, s.url("ResearchSubject/mc-01-001/$sdv")).await.0,
        404
    );
    let (st, sdv) = get(&mon, s.url("ResearchSubject/mc-01-001/$sdv")).await;
    assert_eq!(st, 200, "{sdv}");
    assert_eq!(sdv["site"], S1);
    let items = sdv["items"].as_array().unwrap();
    let item = |r: &str| {
        items
            .iter()
            .find(|i| i["resource"].as_str().unwrap().starts_with(r))
            .unwrap_or_else(|| panic!("{r} not in {sdv}"))
    };
    // Every value of the subject, screening to month 24.
    for r in [
        "ResearchSubject/mc-01-001/",
        "Observation/mc-01-001-bmi/",
        "Observation/mc-01-001-icrs-grade/",
        "Procedure/mc-01-001-implantation/",
        "Observation/mc-01-001-koos-pain-v5/",
        "Observation/mc-01-001-koos-pain-m24/",
    ] {
        item(r);
    }
    // The source of the BMI: the gateway's Provenance with the message id.
    let bmi = item("Observation/mc-01-001-bmi/");
    assert_eq!(bmi["sources"][0]["message"], "LIS|MSG0001", "{bmi}");
    // Versions with who, when and why.
    let m = item("Observation/mc-01-001-koos-pain-m24/");
    assert_eq!(
        m["resource"],
        "Observation/mc-01-001-koos-pain-m24/_history/2"
    );
    let v = m["versions"].as_array().unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[1]["change"]["who"], "test-site");
    assert_eq!(v[1]["change"]["why"], "correction");
    assert_eq!(v[1]["change"]["action"], "U");
    assert!(v[0]["change"]["when"].is_string());
    // The diff of the correction.
    let (st, d) = get(&mon, s.url("Observation/mc-01-001-koos-pain-m24/$diff")).await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(
        d["differences"],
        json!([{"path": "Observation.valueQuantity.value", "op": "replace", "old": 90, "new": 88}])
    );
    assert_eq!(d["change"]["why"], "correction");
    // Verification marks: the only thing a monitor writes.
    assert_eq!(
        send(
            &mon,
            reqwest::Method::PUT,
            s.url("Observation/mc-01-001-bmi"),
            Some(example("Observation-mc-01-001-bmi.json"))
        )
        .await
        .0,
        403
    );
    let (st, p) = send(&mon, reqwest::Method::POST, s.url("Observation/mc-01-001-bmi/$verify"),
        Some(json!({"resourceType": "Parameters", "parameter": [{"name": "comment", "valueString": "matches the lab printout"}]}))).await;
    assert_eq!(st, 201, "{p}");
    assert_eq!(
        p["target"][0]["reference"],
        "Observation/mc-01-001-bmi/_history/1"
    );
    assert_eq!(
        send(
            &site,
            reqwest::Method::POST,
            s.url("Observation/mc-01-001-bmi/$verify"),
            None
        )
        .await
        .0,
        403
    );
    let (_, sdv) = get(
        &mon,
        s.url("ResearchSubject/mc-01-001/$sdv?unverified=true"),
    )
    .await;
    let listed: Vec<&str> = sdv["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["resource"].as_str().unwrap())
        .collect();
    assert!(
        !listed
            .iter()
            .any(|r| r.starts_with("Observation/mc-01-001-bmi/")),
        "{listed:?}"
    );
    assert_eq!(
        sdv["unverified"].as_u64().unwrap() + 1,
        sdv["values"].as_u64().unwrap()
    );
    // The verification is audited as the monitor's act.
    let acts = audit_events(&s, 1, |e| {
        e["action"] == "C"
            && e.pointer("/agent/0/who/identifier/value") == Some(&json!("test-monitor"))
    })
    .await;
    assert!(acts[0].to_string().contains("Provenance/"), "{acts:?}");
}

/// Site 01's example subject, enrolled and implanted (2026-03-16), then with a late BMI of 36.2
/// and a birth date that puts its age at consent at 66-67: the facts the rules read.
async fn enrolled_subject_of_site_01(s: &TestStore) -> Who {
    let site = who("site-01", Role::Site, &[S1], "");
    for f in [
        "Patient-mc-01-001.json",
        "ResearchSubject-mc-01-001.json",
        "Observation-mc-01-001-bmi.json",
        "Observation-mc-01-001-icrs-grade.json",
    ] {
        let st = put(&site, s, example(f)).await;
        assert!(st == 200 || st == 201, "{f}: {st}");
    }
    let mut rs = example("ResearchSubject-mc-01-001.json");
    rs["status"] = json!("on-study");
    assert_eq!(put(&site, s, rs).await, 200);
    assert_eq!(
        put(&site, s, example("Procedure-mc-01-001-implantation.json")).await,
        201
    );
    let mut bmi = example("Observation-mc-01-001-bmi.json");
    bmi["id"] = json!("mc-01-001-bmi-late");
    bmi["effectiveDateTime"] = json!("2026-09-01");
    bmi["valueQuantity"]["value"] = json!(36.2);
    assert_eq!(put(&site, s, bmi).await, 201);
    let mut p = example("Patient-mc-01-001.json");
    p["birthDate"] = json!("1959-06-01");
    assert_eq!(put(&site, s, p).await, 200);
    site
}

/// What `$validate` said, as one string.
async fn validate(w: &Who, s: &TestStore, v: Value) -> (u16, String) {
    let rt = v["resourceType"].as_str().unwrap().to_string();
    let (st, oo) = send(
        w,
        reqwest::Method::POST,
        s.url(&format!("{rt}/$validate")),
        Some(v),
    )
    .await;
    (st, oo.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_runs_with_the_callers_rights() {
    let s = TestStore::start().await;
    let site1 = enrolled_subject_of_site_01(&s).await;
    let site2 = who("site-02", Role::Site, &[S2], "");
    let mon2 = who("monitor of site 02", Role::Monitor, &[S2], "");
    let study2 = json!({"reference": format!("ResearchStudy/{S2}")});
    // 1. The subject's status, through a status change of its id.
    let mut status = example("ResearchSubject-mc-01-001.json");
    status["status"] = json!("candidate");
    // 2. BMI and age band, through an enrolment of its patient.
    let mut enrol = example("ResearchSubject-mc-01-001.json");
    enrol["id"] = json!("mc-02-900");
    enrol["status"] = json!("on-study");
    enrol["study"] = study2.clone();
    enrol["identifier"][0]["value"] = json!("MC-02-900");
    // 3. Its implantation's id, through a second implantation.
    let mut implant = example("Procedure-mc-01-001-implantation.json");
    implant["id"] = json!("mc-02-implant");
    // 4. Its surgery date, through a visit far from it.
    let mut visit = example("Observation-mc-01-001-koos-pain-v5.json");
    visit["id"] = json!("mc-02-visit");
    visit["effectiveDateTime"] = json!("2026-01-01");
    let probes = [
        ("status", status, ["on-study", "cannot change"]),
        ("eligibility", enrol, ["36.2", "66"]),
        (
            "implantation",
            implant,
            ["mc-01-001-implantation", "already has"],
        ),
        ("visit window", visit, ["relative to surgery", "day -74"]),
    ];
    for (what, v, secrets) in &probes {
        for w in [&site2, &mon2] {
            let (st, said) = validate(w, &s, v.clone()).await;
            for secret in secrets {
                assert!(
                    !said.contains(secret),
                    "{} learnt '{secret}' of site 01's subject ({what}, HTTP {st}): {said}",
                    w.name
                );
            }
        }
    }
    // Site 01 itself is told (the rules do run).
    let (_, said) = validate(&site1, &s, probes[2].1.clone()).await;
    assert!(said.contains("already has an implantation"), "{said}");
    let (_, said) = validate(&site1, &s, probes[3].1.clone()).await;
    assert!(said.contains("day -74 relative to surgery"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_evidence_cannot_be_forged_or_erased_by_a_site() {
    let s = TestStore::start().await;
    let site1 = enrolled_subject_of_site_01(&s).await;
    let mon = who("monitor", Role::Monitor, &[S1], "");
    let system = Who {
        name: "system",
        http: integration_tests::client(),
    };
    // A site's own Provenance naming the monitor as verifier.
    let forged = json!({"resourceType": "Provenance", "id": "mc-01-forged",
        "target": [{"reference": "Observation/mc-01-001-bmi/_history/1"}],
        "recorded": "2026-03-03T10:00:00Z",
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "verifier"}]},
                   "who": {"identifier": {"system": "urn:trialbridge:token-subject", "value": "test-monitor"}}}]});
    let (st, oo) = send(
        &site1,
        reqwest::Method::PUT,
        s.url("Provenance/mc-01-forged"),
        Some(forged.clone()),
    )
    .await;
    assert_eq!(st, 403, "{oo}");
    let mut posted = forged.clone();
    posted.as_object_mut().unwrap().remove("id");
    let (st, _) = send(
        &site1,
        reqwest::Method::POST,
        s.url("Provenance"),
        Some(posted),
    )
    .await;
    assert_eq!(st, 403);
    // ...nor a DetectedIssue of its own claiming to be a protocol deviation.
    let di = json!({"resourceType": "DetectedIssue", "id": "mc-01-di", "status": "final",
        "code": {"coding": [{"system": "https://fhir.mesemcart-sponsor.example/CodeSystem/mesemcart-measures", "code": "protocol-deviation"}]},
        "patient": {"reference": "Patient/mc-01-001"}});
    assert_eq!(put(&site1, &s, di).await, 403);
    // The monitor's real verification, and a deviation the store records (a visit off window).
    let (st, v) = send(
        &mon,
        reqwest::Method::POST,
        s.url("Observation/mc-01-001-bmi/$verify"),
        None,
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let verification = v["id"].as_str().unwrap().to_string();
    let mut late = example("Observation-mc-01-001-koos-pain-v5.json");
    late["effectiveDateTime"] = json!("2026-12-01");
    assert_eq!(put(&site1, &s, late).await, 201);
    let (_, found) = get(
        &mon,
        s.url("DetectedIssue?code=https://fhir.mesemcart-sponsor.example/CodeSystem/mesemcart-measures|protocol-deviation"),
    )
    .await;
    let deviations = entries(&found);
    assert!(!deviations.is_empty(), "{found}");
    // The site may delete neither, reason or not.
    for target in [format!("Provenance/{verification}"), deviations[0].clone()] {
        let (st, oo) = send(&site1, reqwest::Method::DELETE, s.url(&target), None).await;
        assert_eq!(st, 403, "{target}: {oo}");
        assert_eq!(get(&mon, s.url(&target)).await.0, 200, "{target} stays");
    }
    // $sdv counts the monitor's verification only.
    let (st, sdv) = get(&mon, s.url("ResearchSubject/mc-01-001/$sdv")).await;
    assert_eq!(st, 200, "{sdv}");
    let bmi = sdv["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["resource"]
                .as_str()
                .unwrap()
                .starts_with("Observation/mc-01-001-bmi/")
        })
        .unwrap()
        .clone();
    assert_eq!(
        bmi["verifications"].as_array().map_or(0, Vec::len),
        1,
        "{bmi}"
    );
    // Deleting a clinical resource needs a reason, Provenance included.
    let src = json!({"resourceType": "Provenance", "id": "mc-01-src",
        "target": [{"reference": "Observation/mc-01-001-bmi"}], "recorded": "2026-03-02T09:15:00Z",
        "agent": [{"who": {"display": "site gateway"}}]});
    assert_eq!(put(&site1, &s, src).await, 201);
    let plain = client_with(&token(Role::Site, &[S1], ""));
    let r = plain
        .delete(s.url("Provenance/mc-01-src"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = plain
        .delete(s.url("Provenance/mc-01-src"))
        .header("x-reason-for-change", "filed against the wrong value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The system may remove monitor evidence (with a reason), nobody else.
    let (st, oo) = send(
        &system,
        reqwest::Method::DELETE,
        s.url(&format!("Provenance/{verification}")),
        None,
    )
    .await;
    assert_eq!(st, 204, "{oo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_namespace_gets_one_answer_whether_it_exists_or_not() {
    let s = TestStore::start().await;
    let (site1, site2) = two_sites(&s).await;
    let same = |a: &Value, b: &Value, id_a: &str, id_b: &str| {
        assert_eq!(
            a.to_string().replace(id_a, "ID"),
            b.to_string().replace(id_b, "ID"),
            "the answers differ"
        );
    };
    // Writing an id of site 01's namespace: existing (mc-01-p) or not (mc-01-002).
    let (st_e, oo_e) = send(
        &site2,
        reqwest::Method::PUT,
        s.url("Patient/mc-01-p"),
        Some(patient("mc-01-p", "male")),
    )
    .await;
    let (st_m, oo_m) = send(
        &site2,
        reqwest::Method::PUT,
        s.url("Patient/mc-01-002"),
        Some(patient("mc-01-002", "male")),
    )
    .await;
    assert_eq!((st_e, st_m), (403, 403), "{oo_e} {oo_m}");
    same(&oo_e, &oo_m, "mc-01-p", "mc-01-002");
    let (st_e, oo_e) = send(
        &site2,
        reqwest::Method::DELETE,
        s.url("Patient/mc-01-p"),
        None,
    )
    .await;
    let (st_m, oo_m) = send(
        &site2,
        reqwest::Method::DELETE,
        s.url("Patient/mc-01-002"),
        None,
    )
    .await;
    assert_eq!((st_e, st_m), (403, 403), "{oo_e} {oo_m}");
    same(&oo_e, &oo_m, "mc-01-p", "mc-01-002");
    // Referencing one.
    let (st_e, oo_e) = send(
        &site2,
        reqwest::Method::PUT,
        s.url("Observation/mc-02-ref"),
        Some(observation("mc-02-ref", "mc-01-p", "29463-7", 1.0)),
    )
    .await;
    let (st_m, oo_m) = send(
        &site2,
        reqwest::Method::PUT,
        s.url("Observation/mc-02-ref"),
        Some(observation("mc-02-ref", "mc-01-002", "29463-7", 1.0)),
    )
    .await;
    assert_eq!((st_e, st_m), (403, 403), "{oo_e} {oo_m}");
    same(&oo_e, &oo_m, "mc-01-p", "mc-01-002");
    assert_eq!(
        oo_e["issue"][0]["expression"][0], "Observation.subject",
        "{oo_e}"
    );
    // In a transaction the refusal names the entry's element; an absolute reference to
    // another server (the EHR version a value came from) is no reference into the store.
    let txn = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("mc-02-ref2", "mc-02-p", "29463-7", 1.0),
         "request": {"method": "PUT", "url": "Observation/mc-02-ref2"}},
        {"resource": {"resourceType": "Provenance", "id": "mc-02-prov",
            "target": [{"reference": "Observation/mc-02-ref2"}], "recorded": "2026-03-02T10:00:00+01:00",
            "agent": [{"who": {"display": "site 02 gateway"}}],
            "entity": [{"role": "source", "what": {"reference": "https://ehr.site02.example/fhir/Observation/mc-01-p/_history/3"}},
                       {"role": "source", "what": {"reference": "Patient/mc-01-p"}}]},
         "request": {"method": "PUT", "url": "Provenance/mc-02-prov"}}]});
    let (st, oo) = send(&site2, reqwest::Method::POST, s.url(""), Some(txn)).await;
    assert_eq!(st, 403, "{oo}");
    let named: Vec<&str> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    assert_eq!(
        named,
        ["Bundle", "Bundle.entry[1].resource.entity[1].what"],
        "{oo}"
    );
    // A subject number of site 01 filed by site 02.
    let rs = json!({"resourceType": "ResearchSubject", "id": "mc-02-rs9", "status": "candidate",
        "identifier": [{"system": "https://fhir.mesemcart-sponsor.example/sid/subject", "value": "MC-01-003"}],
        "study": {"reference": format!("ResearchStudy/{S2}")},
        "individual": {"reference": "Patient/mc-02-p"}});
    let (st, oo) = send(
        &site2,
        reqwest::Method::PUT,
        s.url("ResearchSubject/mc-02-rs9"),
        Some(rs),
    )
    .await;
    assert_eq!(st, 403, "{oo}");
    assert!(
        oo.to_string().contains("ResearchSubject.identifier"),
        "{oo}"
    );
    // An id outside every namespace is not a site's to choose.
    assert_eq!(put(&site2, &s, patient("p-anything", "male")).await, 403);
    // Site 01 still owns its ids: nothing was squatted.
    assert_eq!(put(&site1, &s, patient("mc-01-002", "female")).await, 201);
    // Site 02 may not file an implantation for site 01's future patient either.
    let mut implant = example("Procedure-mc-01-001-implantation.json");
    implant["id"] = json!("mc-02-implant");
    implant["subject"] = json!({"reference": "Patient/mc-01-777"});
    let (st, oo) = send(
        &site2,
        reqwest::Method::PUT,
        s.url("Procedure/mc-02-implant"),
        Some(implant),
    )
    .await;
    assert_eq!(st, 403, "{oo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_values_are_matched_as_r4_says_and_errors_show_no_sql() {
    let s = TestStore::start().await;
    let system = Who {
        name: "system",
        http: integration_tests::client(),
    };
    let named = |id: &str, family: &str| json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
    assert_eq!(put(&system, &s, named("alice", "Alice")).await, 201);
    assert_eq!(put(&system, &s, named("comma", "a,b")).await, 201);
    // A lone backslash is no wildcard: nothing is deleted, nothing matched.
    let (st, oo) = send(
        &system,
        reqwest::Method::DELETE,
        s.url("Patient?name=%5C"),
        None,
    )
    .await;
    assert!(st == 400 || st == 204, "{st} {oo}");
    assert_eq!(
        get(&system, s.url("Patient/alice")).await.0,
        200,
        "Alice survives"
    );
    let r = system
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "name=\\")
        .body(named("", "Bob").to_string())
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let created: Value = r.json().await.unwrap();
    assert_ne!(created["name"][0]["family"], "Alice", "{created}");
    assert!(st == 400 || st == 201, "{st}");
    // The escapes of R4: \, matches a comma.
    let (_, b) = get(&system, s.url("Patient?name:exact=a%5C,b")).await;
    assert_eq!(entries(&b), ["Patient/comma"], "{b}");
    let (_, b) = get(&system, s.url("Patient?name=alice,a%5C,b&_count=10")).await;
    let mut found = entries(&b);
    found.sort();
    assert_eq!(found, ["Patient/alice", "Patient/comma"], "{b}");
    // Numbers outside the double range: 400, no SQL.
    for q in [
        "value-quantity=0e400",
        "value-quantity=ap1e308",
        "value-quantity=1e309",
    ] {
        let (st, oo) = get(&system, s.url(&format!("Observation?{q}"))).await;
        assert_eq!(st, 400, "{q}: {oo}");
        let text = oo.to_string().to_ascii_lowercase();
        for sql in ["select", "sqlite", "where", "syntax"] {
            assert!(!text.contains(sql), "{q}: {oo}");
        }
    }
    // The last day FHIR can write.
    let mut o = observation("last-day", "alice", "29463-7", 70.0);
    o["effectiveDateTime"] = json!("9999-12-31");
    assert_eq!(put(&system, &s, o).await, 201);
    for q in [
        "date=9999-12-31",
        "date=ge9999-12-31",
        "date=9999",
        "date=lt9999-12-31",
    ] {
        let (st, oo) = get(&system, s.url(&format!("Observation?{q}"))).await;
        assert_eq!(st, 200, "{q}: {oo}");
    }
    // A thousand ORed values: 400 naming the limit.
    let many: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let (st, oo) = get(
        &system,
        s.url(&format!("Observation?code={}", many.join(","))),
    )
    .await;
    assert_eq!(st, 400, "{oo}");
    assert!(oo.to_string().contains("100"), "{oo}");
    // Conditional criteria that would widen the match are refused.
    for q in ["name:missing=true", "name:contains=a", "gender:not=male"] {
        let (st, oo) = send(
            &system,
            reqwest::Method::DELETE,
            s.url(&format!("Patient?{q}")),
            None,
        )
        .await;
        assert_eq!(st, 400, "{q}: {oo}");
    }
    assert_eq!(get(&system, s.url("Patient/alice")).await.0, 200);
}

/// `$viewdefinition-run` answers the warehouse with every site's rows and a monitor with its
/// sites' rows only (the cross-site result `o2x` included for site 02 only), refuses a site,
/// names the element of an invalid view, and runs the study's views by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewdefinition_run_sees_what_the_caller_sees() {
    let s = TestStore::start().await;
    let (site1, _site2) = two_sites(&s).await;
    let mon1 = who("monitor of site 01", Role::Monitor, &[S1], "");
    let mon2 = who("monitor of site 02", Role::Monitor, &[S2], "");
    let wh = who("warehouse", Role::Warehouse, &[], "");
    let view = json!({"resourceType": "ViewDefinition", "name": "weights", "resource": "Observation", "select": [
        {"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                    {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"}]}]});
    let run = |w: &Who, params: Value| {
        let r = w
            .http
            .post(s.url("ViewDefinition/$viewdefinition-run"))
            .header("content-type", "application/fhir+json")
            .body(params.to_string());
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (status, ct, r.text().await.unwrap())
        }
    };
    let params = |format: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": view.clone()},
            {"name": "_format", "valueCode": format}]})
    };
    let ids = |body: &str| -> Vec<String> {
        let rows: Vec<Value> = serde_json::from_str(body).unwrap();
        let mut ids: Vec<String> = rows
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let (st, ct, body) = run(&wh, params("json")).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(
        ids(&body),
        [
            "Observation/mc-01-o",
            "Observation/mc-02-o",
            "Observation/o2x"
        ]
    );
    let (st, _, body) = run(&mon1, params("json")).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(ids(&body), ["Observation/mc-01-o"]);
    let (_, _, body) = run(&mon2, params("json")).await;
    assert_eq!(ids(&body), ["Observation/mc-02-o", "Observation/o2x"]);
    let (st, ct, body) = run(&mon1, params("csv")).await;
    assert_eq!(st, 200);
    assert_eq!(ct.as_deref(), Some("text/csv; charset=utf-8"));
    assert_eq!(
        body,
        "id,patient,value\nObservation/mc-01-o,Patient/mc-01-p,70.0\n"
    );
    let (st, _, body) = run(&site1, params("json")).await;
    assert_eq!(st, 403, "{body}");
    // The operation's R4 form at the system level, the format from Accept, _count rows.
    let mut p = params("json");
    p["parameter"] = json!([p["parameter"][0].clone(), {"name": "_count", "valueInteger": 2}]);
    let r = wh
        .http
        .post(s.url("$viewdefinition-run"))
        .header("content-type", "application/fhir+json")
        .header("accept", "application/x-ndjson")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().lines().count(), 2);

    let mut bad = params("json");
    bad["parameter"][0]["resource"]["select"][0]["forEach"] = json!(3);
    let (st, _, body) = run(&wh, bad).await;
    assert_eq!(st, 400, "{body}");
    let oo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        oo["issue"][0]["expression"][0], "ViewDefinition.select[0].forEach",
        "{oo}"
    );

    // A study view by name, as NDJSON, for the monitor of site 01.
    let r = mon1
        .http
        .get(s.url("ViewDefinition/subject/$viewdefinition-run?_format=ndjson"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["subject_id"], "MC-01-001");
    let (st, _) = get(&mon1, s.url("ViewDefinition/nothing/$viewdefinition-run")).await;
    assert_eq!(st, 404);
}
