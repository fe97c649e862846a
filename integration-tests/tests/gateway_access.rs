//! The gateway's HTTP API behind tokens: every endpoint that shows or changes the key list,
//! the dead letters or the audit log, and `POST /hl7v2`, refuses a request without a token, with
//! a token of another role or site, with a Host the gateway does not answer to, and from a web
//! page of another origin; health, status and metrics stay open. Bad input is a 400 with a
//! message, never a panic.

use integration_tests::gateway::{site_token, staff, TestGateway, SITE_STUDY};
use integration_tests::{token, Role, TestStore};
use reqwest::{Method, StatusCode};
use serde_json::json;

const ORU: &str = "MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|CSRF-1|P|2.5.1\rPID|1||4711^^^KH-NORD^MR\rOBX|1|NM|29463-7^Body weight^LN||70|kg^^UCUM|||||F|||20260302093000+0100\r";

/// Request headers as (name, value).
type Headers = Vec<(&'static str, String)>;

/// Every protected endpoint with a body that would be accepted from site staff.
fn protected() -> Vec<(Method, &'static str, Option<String>)> {
    vec![
        (Method::GET, "/enrolments", None),
        (
            Method::POST,
            "/enrolments",
            Some(json!({"mrn": "9", "authority": "KH", "subjectId": "MC-01-009"}).to_string()),
        ),
        (Method::DELETE, "/enrolments?authority=KH&mrn=9", None),
        (Method::GET, "/dead-letters", None),
        (Method::GET, "/dead-letters/1", None),
        (Method::DELETE, "/dead-letters/1", None),
        (Method::POST, "/dead-letters/1/replay", None),
        (Method::GET, "/audit", None),
        (Method::GET, "/messages", None),
        (Method::GET, "/messages?q=4711", None),
        (Method::GET, "/messages/1", None),
        (Method::POST, "/hl7v2", Some(ORU.into())),
    ]
}

async fn call(
    g: &TestGateway,
    method: &Method,
    path: &str,
    body: &Option<String>,
    headers: &[(&str, String)],
) -> (StatusCode, String) {
    let mut r = reqwest::Client::new().request(method.clone(), g.url(path));
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    if let Some(b) = body {
        r = r.header("content-type", "text/plain").body(b.clone());
    }
    let r = r.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_protected_endpoint_refuses_strangers() {
    let store = TestStore::start().await;
    let dir = tempfile::tempdir().unwrap();
    let g = TestGateway::start_in(dir.path(), &store.base, |_| {}).await;
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
    let port = g.http.rsplit(':').next().unwrap().to_string();
    let strangers: Vec<(&str, Headers, StatusCode)> = vec![
        ("no token", vec![], StatusCode::UNAUTHORIZED),
        (
            "a forged token",
            vec![bearer("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "another site's token",
            vec![bearer(&token(Role::Site, &["mesemcart-site-02"], ""))],
            StatusCode::FORBIDDEN,
        ),
        (
            "a monitor of this site",
            vec![bearer(&token(Role::Monitor, &[SITE_STUDY], ""))],
            StatusCode::FORBIDDEN,
        ),
        (
            "the warehouse",
            vec![bearer(&token(Role::Warehouse, &[], ""))],
            StatusCode::FORBIDDEN,
        ),
        (
            "a rebound DNS name",
            vec![
                bearer(site_token()),
                ("host", format!("evil.example:{port}")),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            "a web page of another origin",
            vec![
                bearer(site_token()),
                ("origin", "http://evil.example".into()),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            "a cross-site form post without a token",
            vec![("origin", "http://evil.example".into())],
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, path, body) in protected() {
        for (who, headers, expected) in &strangers {
            let (status, text) = call(&g, &method, path, &body, headers).await;
            assert_eq!(status, *expected, "{method} {path} by {who}: {text}");
            assert!(
                text.contains("OperationOutcome"),
                "{method} {path} by {who}: {text}"
            );
        }
    }
    // Nothing reached the key list, the store or the gateway's records.
    let list = g.get("/enrolments").await;
    assert_eq!(list, json!([]));
    let status = g.get("/status").await;
    assert_eq!(status["messages_done"], 0, "{status}");
    // The open endpoints need nothing: health, counters, and the console's files (no data).
    for path in [
        "/livez",
        "/readyz",
        "/status",
        "/metrics",
        "/app/console",
        "/app/console.js",
        "/app/settings.json",
    ] {
        let (status, _) = call(&g, &Method::GET, path, &None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // The store's pages are not the gateway's.
    let (status, _) = call(&g, &Method::GET, "/app/monitor.js", &None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Site staff of this site, on the gateway's own Host, may.
    let (status, text) = call(
        &g,
        &Method::POST,
        "/hl7v2",
        &Some(ORU.into()),
        &[bearer(site_token())],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("MSA|AA|CSRF-1"), "{text}");
    // ... also from a page the gateway serves itself (same origin).
    let same = g.http.clone();
    let (status, _) = call(
        &g,
        &Method::GET,
        "/enrolments",
        &None,
        &[bearer(site_token()), ("origin", same)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Key-list reads are audited.
    let audit = g.get("/audit").await;
    let reads = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "read-key-list")
        .count();
    assert_eq!(reads, 2, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_a_400_with_a_message_never_a_panic() {
    let store = TestStore::start().await;
    let dir = tempfile::tempdir().unwrap();
    let g = TestGateway::start_in(dir.path(), &store.base, |_| {}).await;
    for body in [
        r#"{"subjectId":"MC-ü1-001","mrn":"1","authority":"KH"}"#,
        r#"{"subjectId":"ÄÖÜ€€€","mrn":"1","authority":"KH"}"#,
        r#"{"subjectId":"MC-01-001","identifiers":"4711"}"#,
        r#"{"subjectId":"MC-01-001","identifiers":[{"authority":"KH","value":["x"]}]}"#,
        r#"{"subjectId":"MC-01-001","mrn":"1","authority":"KH","gender":5}"#,
        "{",
        "",
    ] {
        let r = staff()
            .post(g.url("/enrolments"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains("diagnostics"), "{body}: {text}");
    }
    // Decisions need a reason.
    let r = reqwest::Client::new()
        .delete(g.url("/enrolments?authority=KH&mrn=1"))
        .bearer_auth(site_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The message list names what is wrong with its query.
    for (query, says) in [
        ("state=lost", "state"),
        ("_count=0", "_count"),
        ("_count=100000", "_count"),
        ("before=x", "before"),
    ] {
        let r = staff()
            .get(g.url(&format!("/messages?{query}")))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{query}: {text}");
        assert!(text.contains(says), "{query}: {text}");
    }
    for path in [
        "/messages/x",
        "/dead-letters/1e9",
        "/dead-letters/%00/replay",
    ] {
        let r = staff().get(g.url(path)).send().await.unwrap();
        let r = if path.ends_with("replay") {
            staff().post(g.url(path)).send().await.unwrap()
        } else {
            r
        };
        assert_eq!(r.status(), 400, "{path}");
        assert!(
            r.text().await.unwrap().contains("OperationOutcome"),
            "{path}"
        );
    }
    let r = staff().get(g.url("/messages/99")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The gateway still answers.
    assert_eq!(g.get("/enrolments").await, json!([]));
    assert_eq!(g.get("/messages").await["messages"], json!([]));
}
