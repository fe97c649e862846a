//! The FHIR REST interactions of the trial store, and every error path with its
//! OperationOutcome code and expression.

use integration_tests::{client, get_text, next_link, TestStore};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Option<String>) -> Reply {
    let mut rb = client().request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.body(b);
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            rb = rb.header("content-type", "application/fhir+json");
        }
    }
    let r = rb.send().await.expect("request");
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// Asserts an OperationOutcome with this status, issue code and expression.
fn assert_outcome(r: &Reply, status: u16, code: &str, expression: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert_eq!(r.body["resourceType"], "OperationOutcome", "{}", r.body);
    let issues = r.body["issue"].as_array().expect("issues");
    assert!(
        issues.iter().any(|i| i["code"] == code
            && i["severity"] == "error"
            && i["expression"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x == expression))),
        "expected code {code} at {expression}: {}",
        r.body
    );
    assert!(issues
        .iter()
        .all(|i| i["diagnostics"].as_str().is_some_and(|d| !d.is_empty())));
}

fn obs(id: Option<&str>) -> Value {
    // Parsed from text: the json! macro would turn 24.50 into 24.5.
    let mut o: Value = serde_json::from_str(r#"{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"39156-5"}]},"subject":{"display":"a test subject"},"effectiveDateTime":"2026-03-02","valueQuantity":{"value":24.50,"unit":"kg/m2","system":"http://unitsofmeasure.org","code":"kg/m2"}}"#).unwrap();
    if let Some(id) = id {
        o["id"] = json!(id);
    }
    o
}

/// PUTs the test Observation as `Observation/{id}`.
async fn put_obs(s: &TestStore, id: &str) -> Reply {
    send(
        Method::PUT,
        &s.url(&format!("Observation/{id}")),
        &[],
        Some(obs(Some(id)).to_string()),
    )
    .await
}

#[tokio::test]
async fn create_read_update_vread_delete() {
    let s = TestStore::start().await;
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[],
        Some(obs(Some("ignored")).to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_ne!(id, "ignored", "create assigns the id");
    let loc = r.headers["location"].to_str().unwrap();
    assert_eq!(loc, s.url(&format!("Observation/{id}/_history/1")));
    assert_eq!(r.headers["etag"], "W/\"1\"");
    assert!(r.headers.contains_key("last-modified"));
    assert_eq!(r.body["meta"]["versionId"], "1");

    let r = send(Method::GET, &s.url(&format!("Observation/{id}")), &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["valueQuantity"]["value"].to_string(), "24.50");

    let mut updated = r.body.clone();
    updated["status"] = json!("amended");
    let r = send(
        Method::PUT,
        &s.url(&format!("Observation/{id}")),
        &[("if-match", "W/\"1\"")],
        Some(updated.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["etag"], "W/\"2\"");
    let r = send(
        Method::GET,
        &s.url(&format!("Observation/{id}/_history/1")),
        &[],
        None,
    )
    .await;
    assert_eq!(r.body["status"], "final");
    let r = send(
        Method::GET,
        &s.url(&format!("Observation/{id}/_history/2")),
        &[],
        None,
    )
    .await;
    assert_eq!(r.body["status"], "amended");

    let r = send(
        Method::DELETE,
        &s.url(&format!("Observation/{id}")),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = send(Method::GET, &s.url(&format!("Observation/{id}")), &[], None).await;
    assert_outcome(&r, 410, "deleted", "Observation.id");
    let r = send(
        Method::GET,
        &s.url(&format!("Observation/{id}/_history/3")),
        &[],
        None,
    )
    .await;
    assert_outcome(&r, 410, "deleted", "Observation.meta.versionId");
    // History keeps every version, the tombstone included.
    let r = send(
        Method::GET,
        &s.url(&format!("Observation/{id}/_history")),
        &[],
        None,
    )
    .await;
    let methods: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    // Update after delete re-creates.
    let r = put_obs(&s, &id).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers["etag"], "W/\"4\"");
}

#[tokio::test]
async fn put_creates_and_conditional_headers() {
    let s = TestStore::start().await;
    let r = send(
        Method::PUT,
        &s.url("Observation/bmi-1"),
        &[],
        Some(obs(Some("bmi-1")).to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = send(
        Method::GET,
        &s.url("Observation/bmi-1"),
        &[("if-none-match", "W/\"1\"")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = send(
        Method::GET,
        &s.url("Observation/bmi-1"),
        &[("if-none-match", "W/\"7\"")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(
        Method::GET,
        &s.url("Observation/bmi-1"),
        &[("if-modified-since", "Sun, 06 Nov 2101 08:49:37 GMT")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = send(
        Method::GET,
        &s.url("Observation/bmi-1"),
        &[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn prefer_return() {
    let s = TestStore::start().await;
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[("prefer", "return=minimal")],
        Some(obs(None).to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body, Value::Null);
    assert!(r.headers.contains_key("location"));
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[("prefer", "return=OperationOutcome")],
        Some(obs(None).to_string()),
    )
    .await;
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    assert_eq!(r.body["issue"][0]["severity"], "information");
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[("prefer", "return=representation")],
        Some(obs(None).to_string()),
    )
    .await;
    assert_eq!(r.body["resourceType"], "Observation");
}

#[tokio::test]
async fn conditional_create_update_delete() {
    let s = TestStore::start().await;
    let p = json!({"resourceType":"Patient","identifier":[{"system":"urn:mesemcart:subject","value":"MC-01-001"}],"gender":"female"});
    let h = [(
        "if-none-exist",
        "identifier=urn:mesemcart:subject|MC-01-001",
    )];
    let a = send(Method::POST, &s.url("Patient"), &h, Some(p.to_string())).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let b = send(Method::POST, &s.url("Patient"), &h, Some(p.to_string())).await;
    assert_eq!(
        b.status,
        StatusCode::OK,
        "the second conditional create finds the first"
    );
    assert_eq!(a.body["id"], b.body["id"]);

    let mut changed = p.clone();
    changed["gender"] = json!("male");
    let r = send(
        Method::PUT,
        &s.url("Patient?identifier=urn:mesemcart:subject|MC-01-001"),
        &[],
        Some(changed.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], a.body["id"]);
    assert_eq!(r.body["gender"], "male");
    let mut other = changed.clone();
    other["identifier"][0]["value"] = json!("MC-01-002");
    let r = send(
        Method::PUT,
        &s.url("Patient?identifier=urn:mesemcart:subject|MC-01-002"),
        &[],
        Some(other.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "no match creates");

    // Two matches: 412 for conditional create, update and delete.
    let r = send(
        Method::POST,
        &s.url("Patient"),
        &[("if-none-exist", "gender=male")],
        Some(p.to_string()),
    )
    .await;
    assert_outcome(&r, 412, "multiple-matches", "If-None-Exist");
    let r = send(
        Method::PUT,
        &s.url("Patient?gender=male"),
        &[],
        Some(p.to_string()),
    )
    .await;
    assert_outcome(&r, 412, "multiple-matches", "conditional update");
    let r = send(Method::DELETE, &s.url("Patient?gender=male"), &[], None).await;
    assert_outcome(&r, 412, "multiple-matches", "conditional delete");

    let r = send(
        Method::DELETE,
        &s.url("Patient?identifier=urn:mesemcart:subject|MC-01-001"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = send(
        Method::GET,
        &s.url(&format!("Patient/{}", a.body["id"].as_str().unwrap())),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::GONE);
    let r = send(
        Method::DELETE,
        &s.url("Patient?identifier=nothing-matches"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // A criterion the server cannot evaluate must not widen a conditional delete to everything.
    let r = send(
        Method::DELETE,
        &s.url("Patient?not-a-parameter=x"),
        &[],
        None,
    )
    .await;
    assert_outcome(&r, 400, "not-supported", "not-a-parameter");
}

#[tokio::test]
async fn error_paths_name_the_element() {
    let s = TestStore::start_with(|c| c.max_body_bytes = 4096).await;
    // Malformed JSON, with line and column.
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[],
        Some("{\n \"resourceType\": \"Observation\",\n \"status\": }".into()),
    )
    .await;
    assert_outcome(&r, 400, "structure", "Observation");
    let d = r.body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(d.contains("line 3") && d.contains("column"), "{d}");
    // Not an object / no resourceType.
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[],
        Some("[1,2]".into()),
    )
    .await;
    assert_outcome(&r, 400, "invalid", "Observation");
    // Wrong resourceType for the URL.
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[],
        Some(json!({"resourceType":"Patient"}).to_string()),
    )
    .await;
    assert_outcome(&r, 400, "invalid", "resourceType");
    // Body id differs from the URL id, and is missing.
    let r = send(
        Method::PUT,
        &s.url("Observation/abc"),
        &[],
        Some(obs(Some("xyz")).to_string()),
    )
    .await;
    assert_outcome(&r, 400, "invalid", "Observation.id");
    let r = send(
        Method::PUT,
        &s.url("Observation/abc"),
        &[],
        Some(obs(None).to_string()),
    )
    .await;
    assert_outcome(&r, 400, "required", "Observation.id");
    // Invalid id syntax in the URL and in the body.
    let r = send(Method::GET, &s.url("Observation/bad_id!"), &[], None).await;
    assert_outcome(&r, 400, "value", "Observation.id");
    let r = send(
        Method::PUT,
        &s.url(&format!("Observation/{}", "x".repeat(65))),
        &[],
        Some(obs(None).to_string()),
    )
    .await;
    assert_outcome(&r, 400, "value", "Observation.id");
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[],
        Some(obs(Some("a b")).to_string()),
    )
    .await;
    assert_outcome(&r, 400, "value", "Observation.id");
    // Oversize body (the limit is configurable; here 4 KiB).
    let big =
        json!({"resourceType":"Observation","status":"final","code":{"text":"x".repeat(5000)}});
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[],
        Some(big.to_string()),
    )
    .await;
    assert_outcome(&r, 413, "too-long", "Content-Length");
    // Unknown type.
    let r = send(Method::GET, &s.url("Observaton/1"), &[], None).await;
    assert_outcome(&r, 404, "not-supported", "Observaton");
    let r = send(
        Method::POST,
        &s.url("observation"),
        &[],
        Some(obs(None).to_string()),
    )
    .await;
    assert_outcome(&r, 404, "not-supported", "observation");
    // Version conflict.
    send(
        Method::PUT,
        &s.url("Observation/v1"),
        &[],
        Some(obs(Some("v1")).to_string()),
    )
    .await;
    let r = send(
        Method::PUT,
        &s.url("Observation/v1"),
        &[("if-match", "W/\"5\"")],
        Some(obs(Some("v1")).to_string()),
    )
    .await;
    assert_outcome(&r, 412, "conflict", "Observation.meta.versionId");
    let r = send(
        Method::DELETE,
        &s.url("Observation/v1"),
        &[("if-match", "W/\"2\"")],
        None,
    )
    .await;
    assert_outcome(&r, 412, "conflict", "Observation.meta.versionId");
    let r = send(
        Method::PUT,
        &s.url("Observation/v1"),
        &[("if-match", "banana")],
        Some(obs(Some("v1")).to_string()),
    )
    .await;
    assert_outcome(&r, 400, "value", "Observation.meta.versionId");
    // Not found, unknown version.
    let r = send(Method::GET, &s.url("Observation/missing"), &[], None).await;
    assert_outcome(&r, 404, "not-found", "Observation.id");
    let r = send(Method::GET, &s.url("Observation/v1/_history/9"), &[], None).await;
    assert_outcome(&r, 404, "not-found", "Observation.meta.versionId");
    let r = send(Method::GET, &s.url("Observation/v1/_history/x"), &[], None).await;
    assert_outcome(&r, 400, "value", "Observation.meta.versionId");
    // Media types.
    let r = send(
        Method::GET,
        &s.url("Observation/v1"),
        &[("accept", "application/fhir+xml")],
        None,
    )
    .await;
    assert_outcome(&r, 406, "not-supported", "Accept");
    let r = send(Method::GET, &s.url("Observation/v1?_format=xml"), &[], None).await;
    assert_outcome(&r, 406, "not-supported", "_format");
    let r = send(
        Method::POST,
        &s.url("Observation"),
        &[("content-type", "application/xml")],
        Some("<Observation/>".into()),
    )
    .await;
    assert_outcome(&r, 415, "not-supported", "Content-Type");
    // Unknown endpoints and methods are OperationOutcomes too.
    let r = send(
        Method::GET,
        &format!("{}/nothing/here/at/all/x", s.base),
        &[],
        None,
    )
    .await;
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let r = send(
        Method::PATCH,
        &s.url("Observation/v1/_history"),
        &[],
        Some("{}".into()),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    // PATCH: a FHIR resource other than Parameters is not a patch (400), nor is text (415);
    // a failed operation names where (422) and changes nothing; If-Match as for an update
    // (412).
    let r = send(
        Method::PATCH,
        &s.url("Observation/v1"),
        &[],
        Some("{}".into()),
    )
    .await;
    assert_outcome(&r, 400, "structure", "PATCH body");
    let r = send(
        Method::PATCH,
        &s.url("Observation/v1"),
        &[("content-type", "text/plain")],
        Some("{}".into()),
    )
    .await;
    assert_outcome(&r, 415, "not-supported", "Content-Type");
    let json_patch = [("content-type", "application/json-patch+json")];
    let r = send(
        Method::PATCH,
        &s.url("Observation/v1"),
        &json_patch,
        Some(json!([{"op": "remove", "path": "/component/7/code"}]).to_string()),
    )
    .await;
    assert_outcome(&r, 422, "processing", "Observation.component[7].code");
    let r = send(
        Method::PATCH,
        &s.url("Observation/v1"),
        &[
            ("content-type", "application/json-patch+json"),
            ("if-match", "W/\"9\""),
        ],
        Some(json!([{"op": "replace", "path": "/status", "value": "final"}]).to_string()),
    )
    .await;
    assert_outcome(&r, 412, "conflict", "Observation.meta.versionId");
    // A patch that makes the resource invalid is refused like such an update.
    let r = send(
        Method::PATCH,
        &s.url("Observation/v1"),
        &json_patch,
        Some(json!([{"op": "replace", "path": "/status", "value": "done"}]).to_string()),
    )
    .await;
    assert_outcome(&r, 422, "code-invalid", "Observation.status");
    // Strict search handling names the parameter; lenient reports it in the Bundle.
    let r = send(
        Method::GET,
        &s.url("Observation?foo=bar"),
        &[("prefer", "handling=strict")],
        None,
    )
    .await;
    assert_outcome(&r, 400, "not-supported", "foo");
    let r = send(Method::GET, &s.url("Observation?foo=bar"), &[], None).await;
    let outcome = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("outcome entry");
    assert_eq!(outcome["resource"]["issue"][0]["expression"][0], "foo");
    assert!(!r.body["link"][0]["url"].as_str().unwrap().contains("foo"));
    // Bad history parameters.
    let r = send(Method::GET, &s.url("_history?_since=2024-13-45"), &[], None).await;
    assert_outcome(&r, 400, "value", "_since");
}

#[tokio::test]
async fn content_negotiation_accepts_json_forms() {
    let s = TestStore::start().await;
    send(
        Method::PUT,
        &s.url("Observation/n1"),
        &[("content-type", "application/json; charset=utf-8")],
        Some(obs(Some("n1")).to_string()),
    )
    .await;
    for accept in [
        "application/fhir+json",
        "application/json",
        "*/*",
        "application/fhir+json; fhirVersion=4.0",
        "text/html, application/json;q=0.9",
    ] {
        let r = send(
            Method::GET,
            &s.url("Observation/n1"),
            &[("accept", accept)],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{accept}");
        assert!(r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json"));
    }
    let r = get_text(&s.url("Observation/n1?_pretty=true&_format=json")).await;
    assert!(r.contains("\n  \"resourceType\""), "{r}");
}

#[tokio::test]
async fn history_pages_by_sequence_with_absolute_links() {
    let s = TestStore::start().await;
    for i in 0..25 {
        put_obs(&s, &format!("h{i}")).await;
    }
    // Oldest first, 10 per page: follow next links verbatim.
    let mut url = s.url("Observation/_history?_sort=_lastUpdated&_count=10");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = send(Method::GET, &url, &[], None).await;
        assert_eq!(r.body["type"], "history");
        pages += 1;
        for e in r.body["entry"].as_array().unwrap() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_string());
            assert!(e["fullUrl"].as_str().unwrap().starts_with("http://"));
        }
        match next_link(&r.body) {
            Some(n) => {
                assert!(n.starts_with(&s.base), "absolute link {n}");
                url = n;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("h{i}")).collect();
    assert_eq!(seen, expected);

    // Newest first (the FHIR default), and _since.
    let r = send(Method::GET, &s.url("_history?_count=5"), &[], None).await;
    assert_eq!(r.body["entry"][0]["resource"]["id"], "h24");
    let since = r.body["entry"][2]["resource"]["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    let r = send(
        Method::GET,
        &s.url(&format!("_history?_since={}", since.replace('+', "%2B"))),
        &[],
        None,
    )
    .await;
    assert_eq!(
        r.body["entry"].as_array().unwrap().len(),
        3,
        "_since is inclusive"
    );
    let r = send(Method::GET, &s.url("Patient/_history"), &[], None).await;
    assert!(r.body.get("entry").is_none());
    let r = send(Method::GET, &s.url("Observation/none/_history"), &[], None).await;
    assert_outcome(&r, 404, "not-found", "Observation.id");
}

/// Versions written while a client pages a history: oldest first (the order of a warehouse
/// following the changes) the later pages go on into them; newest first the later pages list
/// exactly the older versions, each once.
#[tokio::test]
async fn history_pages_and_versions_written_while_paging() {
    let s = TestStore::start().await;
    let put = |id: String| {
        let s = &s;
        async move {
            let r = put_obs(s, &id).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        }
    };
    let ids = |body: &Value| -> Vec<String> {
        body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    let names = |prefix: &str, range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|i| format!("{prefix}{i}")).collect()
    };
    for i in 0..12 {
        put(format!("k{i}")).await;
    }
    // Pages the history from its first page, writing `late` versions after that page.
    let page_through = |first: &'static str, late: &'static str| {
        let s = &s;
        async move {
            let r = send(Method::GET, &s.url(first), &[], None).await;
            let mut seen = ids(&r.body);
            for i in 0..3 {
                put(format!("{late}{i}")).await;
            }
            let mut next = next_link(&r.body);
            while let Some(url) = next {
                let r = send(Method::GET, &url, &[], None).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                seen.extend(ids(&r.body));
                next = next_link(&r.body);
            }
            seen
        }
    };
    let oldest_first = page_through("Observation/_history?_sort=_lastUpdated&_count=5", "a").await;
    let expected = [names("k", 0..12), names("a", 0..3)].concat();
    assert_eq!(oldest_first, expected);
    let newest_first = page_through("Observation/_history?_count=5", "b").await;
    let mut expected = [names("k", 0..12), names("a", 0..3)].concat();
    expected.reverse();
    assert_eq!(newest_first, expected);
}

#[tokio::test]
async fn search_pages_with_keyset_links() {
    let s = TestStore::start().await;
    for i in 0..30 {
        let mut o = obs(Some(&format!("s{i:02}")));
        o["subject"] =
            json!({"reference": if i % 2 == 0 { "Patient/even" } else { "Patient/odd" }});
        send(
            Method::PUT,
            &s.url(&format!("Observation/s{i:02}")),
            &[],
            Some(o.to_string()),
        )
        .await;
    }
    let mut url = s.url("Observation?subject=Patient/even&_count=4&_total=accurate");
    let mut ids = Vec::new();
    loop {
        let r = send(Method::GET, &url, &[], None).await;
        assert_eq!(r.body["total"], 15);
        ids.extend(
            r.body["entry"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
        match next_link(&r.body) {
            Some(n) => url = n,
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).step_by(2).map(|i| format!("s{i:02}")).collect();
    assert_eq!(ids, expected);
    let r = send(
        Method::GET,
        &s.url("Observation?code=http://loinc.org|39156-5&_summary=count"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.body["total"], 30);
    assert!(r.body.get("entry").is_none());
    let r = client()
        .post(s.url("Observation/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("subject=odd&_count=100")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["entry"].as_array().unwrap().len(), 15);
}

#[tokio::test]
async fn health_and_capability_statement() {
    let s = TestStore::start().await;
    let root = s.base.trim_end_matches("/fhir").to_string();
    assert_eq!(
        client()
            .get(format!("{root}/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{root}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let cs = send(Method::GET, &s.url("metadata"), &[], None).await;
    assert_eq!(cs.body["resourceType"], "CapabilityStatement");
    assert_eq!(cs.body["fhirVersion"], "4.0.1");
    let rest = &cs.body["rest"][0];
    assert_eq!(rest["resource"].as_array().unwrap().len(), 146);
    // Every interaction claimed for a type is served (no 404/405/501 on its route).
    let obs_caps = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Observation")
        .unwrap();
    send(
        Method::PUT,
        &s.url("Observation/cap"),
        &[],
        Some(obs(Some("cap")).to_string()),
    )
    .await;
    for i in obs_caps["interaction"].as_array().unwrap() {
        let (m, path, body) = match i["code"].as_str().unwrap() {
            "read" => (Method::GET, "Observation/cap", None),
            "vread" => (Method::GET, "Observation/cap/_history/1", None),
            "update" => (
                Method::PUT,
                "Observation/cap",
                Some(obs(Some("cap")).to_string()),
            ),
            "patch" => (
                Method::PATCH,
                "Observation/cap",
                Some(json!([{"op": "replace", "path": "/status", "value": "final"}]).to_string()),
            ),
            "delete" => (Method::DELETE, "Observation/other", None),
            "history-instance" => (Method::GET, "Observation/cap/_history", None),
            "history-type" => (Method::GET, "Observation/_history", None),
            "create" => (Method::POST, "Observation", Some(obs(None).to_string())),
            "search-type" => (Method::GET, "Observation?status=final", None),
            other => panic!("the statement claims '{other}': add it here"),
        };
        let headers: &[(&str, &str)] = if m == Method::PATCH {
            &[("content-type", "application/json-patch+json")]
        } else {
            &[]
        };
        let r = send(m, &s.url(path), headers, body).await;
        assert!(r.status.is_success(), "{} {}", i["code"], r.status);
    }
    for i in rest["interaction"].as_array().unwrap() {
        let r = match i["code"].as_str().unwrap() {
            "transaction" => {
                send(
                    Method::POST,
                    &s.base,
                    &[],
                    Some(json!({"resourceType":"Bundle","type":"transaction"}).to_string()),
                )
                .await
            }
            "batch" => {
                send(
                    Method::POST,
                    &format!("{}/", s.base),
                    &[],
                    Some(json!({"resourceType":"Bundle","type":"batch"}).to_string()),
                )
                .await
            }
            "history-system" => send(Method::GET, &s.url("_history"), &[], None).await,
            "search-system" => {
                send(
                    Method::GET,
                    &format!("{}?_type=Observation&_id=cap", s.base),
                    &[],
                    None,
                )
                .await
            }
            other => panic!("the statement claims '{other}': add it here"),
        };
        assert!(r.status.is_success(), "{}", i["code"]);
    }
    // Search parameters claimed are the ones the index answers.
    let params: Vec<&str> = obs_caps["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(params.contains(&"code") && params.contains(&"subject") && params.contains(&"_id"));
    assert!(
        !params.contains(&"code-value-concept"),
        "token-token composites are not built yet and must not be claimed"
    );
}

#[tokio::test]
async fn an_update_that_changes_nothing_writes_no_version() {
    let s = TestStore::start().await;
    let obs = json!({"resourceType": "Observation", "id": "same", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}], "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"display": "a test subject"}, "effectiveDateTime": "2026-03-02",
        "valueQuantity": {"value": 70.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}});
    let url = s.url("Observation/same");
    let first = send(Method::PUT, &url, &[], Some(obs.to_string())).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // The same content again (a resend): 200 with the current version, no new version, and
    // no reason for change needed (nothing changes).
    let no_reason = integration_tests::client_with(integration_tests::system_token());
    let r = no_reason
        .put(&url)
        .header("content-type", "application/fhir+json")
        .body(obs.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["meta"]["versionId"], "1");
    // Member order, whitespace and the client's meta.versionId do not make a change.
    let reordered = r#"{"id":"same", "resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},"effectiveDateTime":"2026-03-02","subject":{"display":"a test subject"},"valueQuantity":{"value":70.5,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},"meta":{"versionId":"7","lastUpdated":"2020-01-01T00:00:00Z"}}"#;
    let r = send(Method::PUT, &url, &[], Some(reordered.into())).await;
    assert_eq!(
        (r.status, r.body["meta"]["versionId"].as_str()),
        (StatusCode::OK, Some("1"))
    );
    // A number spelt otherwise is stored as sent, so it is new content.
    let respelt = reordered.replace("70.5,", "70.50,");
    let r = send(Method::PUT, &url, &[], Some(respelt)).await;
    assert_eq!(r.body["meta"]["versionId"], "2");
    let mut changed = obs.clone();
    changed["valueQuantity"]["value"] = json!(71);
    let r = send(Method::PUT, &url, &[], Some(changed.to_string())).await;
    assert_eq!(r.body["meta"]["versionId"], "3");
    // In a transaction too.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": changed, "request": {"method": "PUT", "url": "Observation/same"}}]});
    let r = send(Method::POST, &s.base, &[], Some(bundle.to_string())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["entry"][0]["response"]["etag"], "W/\"3\"");
    let history = send(Method::GET, &s.url("Observation/same/_history"), &[], None).await;
    assert_eq!(history.body["entry"].as_array().unwrap().len(), 3);
}

/// The CapabilityStatement against the router and the index: every search parameter listed
/// for every type is answered (not refused as unknown), every operation listed is routed, and
/// AuditEvent claims exactly what it serves (read and search, no writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capability_statement_lists_exactly_what_is_served() {
    let s = TestStore::start().await;
    let cs = send(Method::GET, &s.url("metadata"), &[], None).await.body;
    let rest = &cs["rest"][0];
    let sample = |kind: &str| match kind {
        "reference" => "Patient/x",
        "date" => "2020",
        "number" | "quantity" => "1",
        "uri" => "http://example.org/x",
        _ => "x",
    };
    let mut checked = 0;
    for r in rest["resource"].as_array().unwrap() {
        let t = r["type"].as_str().unwrap();
        for p in r["searchParam"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap();
            let kind = p["type"].as_str().unwrap();
            // A composite's value depends on its components: one of these shapes fits each.
            let values: &[&str] = match (name, kind) {
                ("_summary", _) => &["count"],
                (_, "composite") => &["x$y", "x$1", "x$2020", "x$Patient/x"],
                _ => &[sample(kind)],
            };
            let mut answers = Vec::new();
            for value in values {
                let got = send(
                    Method::GET,
                    &s.url(&format!("{t}?{name}={value}")),
                    &[],
                    None,
                )
                .await;
                answers.push((got.status, got.body));
            }
            assert!(
                answers.iter().any(|(st, _)| *st == StatusCode::OK),
                "{t}?{name}: {answers:?}"
            );
            checked += 1;
        }
        for op in r["operation"].as_array().into_iter().flatten() {
            let name = op["name"].as_str().unwrap();
            let (m, path) = match name {
                "validate" => (Method::POST, format!("{t}/$validate")),
                "diff" => (Method::GET, format!("{t}/x/$diff")),
                "verify" => (Method::POST, format!("{t}/x/$verify")),
                "sdv" => (Method::GET, format!("{t}/x/$sdv")),
                "raise-query" | "answer" | "close" => (Method::POST, format!("{t}/x/${name}")),
                "export" if t == "Group" => (Method::GET, "Group/x/$export".to_string()),
                "export" => (Method::GET, format!("{t}/$export")),
                other => panic!("{t} claims ${other}: add it here"),
            };
            let body = (m == Method::POST).then(|| json!({"resourceType": t}).to_string());
            let got = send(m, &s.url(&path), &[("prefer", "respond-async")], body).await;
            assert_ne!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_ne!(
                got.body["issue"][0]["code"], "not-supported",
                "{path}: {}",
                got.body
            );
            assert!(
                !got.body.is_null() || got.status.is_success(),
                "{path}: routed nowhere"
            );
        }
    }
    assert!(checked > 1000, "{checked} parameters");
    // The system-level operations claimed are served.
    for op in rest["operation"].as_array().unwrap() {
        let got = match op["name"].as_str().unwrap() {
            "export" => {
                send(
                    Method::GET,
                    &s.url("$export"),
                    &[("prefer", "respond-async")],
                    None,
                )
                .await
            }
            "viewdefinition-run" => {
                let params = json!({"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource":
                    {"resourceType": "ViewDefinition", "resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}}]});
                send(
                    Method::POST,
                    &s.url("$viewdefinition-run"),
                    &[],
                    Some(params.to_string()),
                )
                .await
            }
            other => panic!("the CapabilityStatement claims ${other}: add it here"),
        };
        assert!(got.status.is_success(), "${}: {}", op["name"], got.status);
    }
    // AuditEvent: read and search only, and writes are refused.
    let audit = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "AuditEvent")
        .unwrap();
    let codes: Vec<&str> = audit["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["read", "search-type"]);
    let write = send(
        Method::POST,
        &s.url("AuditEvent"),
        &[],
        Some(json!({"resourceType": "AuditEvent"}).to_string()),
    )
    .await;
    assert!(!write.status.is_success(), "{}", write.body);
    // A parameter the statement does not list for AuditEvent is refused.
    let listed: Vec<&str> = audit["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(!listed.contains(&"policy"));
    let got = send(Method::GET, &s.url("AuditEvent?policy=x"), &[], None).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
}

/// R4: `_count=0` is treated as `_summary=count`: the total, no entries (fhirpy's `count()`).
#[tokio::test]
async fn count_zero_answers_the_total() {
    let s = TestStore::start().await;
    integration_tests::put_patients(&s, "cz", 3).await;
    for q in ["Patient?_count=0", "?_type=Patient&_count=0"] {
        let r = send(Method::GET, &s.url(q), &[], None).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        assert_eq!(r.body["total"], 3, "{q}: {}", r.body);
        assert!(r.body.get("entry").is_none(), "{q}: {}", r.body);
    }
}

/// A query string on `POST [type]` is not a condition the server evaluates (conditional
/// create is the `If-None-Exist` header): a 400 that says so, never a silent create
/// (fhirpy's `get_or_create` made duplicates).
#[tokio::test]
async fn a_query_on_create_is_refused_not_ignored() {
    let s = TestStore::start().await;
    let body =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}]});
    let r = send(
        Method::POST,
        &s.url("Patient?identifier=urn:x|1"),
        &[("content-type", "application/fhir+json")],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.to_string().contains("If-None-Exist"), "{}", r.body);
    let all = send(Method::GET, &s.url("Patient?_summary=count"), &[], None).await;
    assert_eq!(all.body["total"], 0, "nothing was created");
    // `_format` and `_pretty` are not conditions: they stay allowed.
    let r = send(
        Method::POST,
        &s.url("Patient?_format=json"),
        &[("content-type", "application/fhir+json")],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// One FHIRPath Patch operation as a Parameters resource.
fn fhirpath_patch(parts: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]})
}

/// A FHIRPath Patch of `Observation/fp1` with one operation of these parts.
async fn patch_fp1(s: &TestStore, parts: Value) -> Reply {
    send(
        Method::PATCH,
        &s.url("Observation/fp1"),
        &[("content-type", "application/fhir+json")],
        Some(fhirpath_patch(parts).to_string()),
    )
    .await
}

#[tokio::test]
async fn fhirpath_patch_and_patch_in_a_transaction() {
    let s = TestStore::start().await;
    let r = send(
        Method::PUT,
        &s.url("Observation/fp1"),
        &[],
        Some(obs(Some("fp1")).to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // FHIRPath Patch: replace by path, validated and written as version 2.
    let r = patch_fp1(
        &s,
        json!([
                {"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Observation.value.value"},
                {"name": "value", "valueDecimal": 25.1}]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["etag"], "W/\"2\"");
    assert_eq!(r.body["valueQuantity"]["value"], json!(25.1));
    // A path that finds two elements is named, and nothing changes.
    let r = patch_fp1(&s, json!([
                {"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Observation.descendants().where($this is string or $this is uri)"},
                {"name": "value", "valueString": "x"}])).await;
    assert_outcome(&r, 422, "processing", "Parameters.parameter[0].part[1]");
    // The result is validated like an update: an unknown status code is refused.
    let r = patch_fp1(
        &s,
        json!([
                {"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Observation.status"},
                {"name": "value", "valueCode": "done"}]),
    )
    .await;
    assert_outcome(&r, 422, "code-invalid", "Observation.status");

    // In a transaction: a JSON Patch in a Binary and a FHIRPath Patch, with the create of a
    // second Observation; all commit together.
    let json_patch = json!([{"op": "add", "path": "/category/-", "value":
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "exam"}]}}]);
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(json_patch.to_string());
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
         "request": {"method": "PATCH", "url": "Observation/fp1", "ifMatch": "W/\"2\""}},
        {"resource": obs(None), "request": {"method": "POST", "url": "Observation"}},
    ]});
    let r = send(Method::POST, &s.base, &[], Some(bundle.to_string())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(r.body["entry"][0]["response"]["etag"], "W/\"3\"");
    let r = send(Method::GET, &s.url("Observation/fp1"), &[], None).await;
    assert_eq!(r.body["category"][1]["coding"][0]["code"], "exam");
    assert_eq!(r.body["valueQuantity"]["value"], json!(25.1));
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": fhirpath_patch(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Observation.category[1]"}])),
         "request": {"method": "PATCH", "url": "Observation?_id=fp1"}},
    ]});
    let r = send(Method::POST, &s.base, &[], Some(bundle.to_string())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = send(Method::GET, &s.url("Observation/fp1"), &[], None).await;
    assert_eq!(
        r.body["category"].as_array().unwrap().len(),
        1,
        "{}",
        r.body
    );
    assert_eq!(r.body["meta"]["versionId"], "4");
    // A failing patch fails the whole transaction and names its entry.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": obs(None), "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": base64::engine::general_purpose::STANDARD.encode(r#"[{"op":"remove","path":"/nothing"}]"#)},
         "request": {"method": "PATCH", "url": "Observation/fp1"}},
    ]});
    let r = send(Method::POST, &s.base, &[], Some(bundle.to_string())).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    let text = r.body.to_string();
    assert!(text.contains("Bundle.entry[1]"), "{text}");
    let r = send(Method::GET, &s.url("Observation/fp1"), &[], None).await;
    assert_eq!(r.body["meta"]["versionId"], "4");
}
