//! The OpenAPI description (`openapi/trialbridge.yaml`, served at `/openapi.json`) and the
//! routers agree in both directions: every route of the store and of the site gateway is
//! documented with its methods, and every documented path and method is served (the answer is
//! not the fallback's "no endpoint"). Then schemathesis drives a running store from the
//! description, bounded in examples: no 5xx, and every response matches the description.

use std::collections::{BTreeMap, BTreeSet};

use integration_tests::{client, repo_root, system_token, TestStore};
use serde_json::Value;

/// `path -> methods` of the description, as the store serves it.
async fn documented(s: &TestStore) -> (Value, BTreeMap<String, BTreeSet<String>>) {
    let root = s.base.trim_end_matches("/fhir");
    // No token: the description is public.
    let r = reqwest::get(format!("{root}/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let methods: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
            .cloned()
            .collect();
        out.insert(path.clone(), methods);
    }
    (doc, out)
}

/// `path -> methods` of the `.route(...)` calls in a router's source file, with the path
/// parameters named as the description names them.
fn routed(file: &str) -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for chunk in text.split(".route(").skip(1) {
        // Up to the next builder call on the router.
        let chunk = chunk
            .split("\n        .")
            .next()
            .unwrap_or(chunk)
            .to_string();
        let path = chunk.split('"').nth(1).expect("a path literal").to_string();
        let path = path
            .replace("{rtype}", "{type}")
            .replace("{member}", "{compartment}");
        // `get(handler)`, `.post(handler)`: the method name alone, not part of a longer name.
        let methods: BTreeSet<String> = ["get", "post", "put", "delete", "patch"]
            .iter()
            .filter(|m| {
                chunk.match_indices(&format!("{m}(")).any(|(i, _)| {
                    !chunk[..i]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                })
            })
            .map(|m| m.to_string())
            .collect();
        assert!(!methods.is_empty(), "{file}: no method for {path}");
        out.entry(path).or_default().extend(methods);
    }
    out
}

/// The route template a documented path falls under: a concrete resource type in the first
/// segment after `/fhir/` stands for `{type}` unless a route names that path itself.
fn route_of(path: &str, routes: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    if routes.contains_key(path) {
        return Some(path.to_string());
    }
    let rest = path.strip_prefix("/fhir/")?;
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if !first.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    let generic = if tail.is_empty() {
        "/fhir/{type}".to_string()
    } else {
        format!("/fhir/{{type}}/{tail}")
    };
    routes.contains_key(&generic).then_some(generic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_and_the_routers_agree_in_both_directions() {
    let s = TestStore::start().await;
    let (doc, documented) = documented(&s).await;
    let mut store = routed("services/trial-store/src/rest/mod.rs");
    // `/fhir/` is `/fhir` with a trailing slash, for clients that add one.
    store.remove("/fhir/");
    let gateway = routed("services/site-gateway/src/http.rs");

    // Every route is documented, with every method it serves: by its own template, or by
    // the concrete types' paths that fall under it (`/fhir/ResearchSubject/{id}/$sdv`).
    let mut covered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, methods) in &documented {
        let route =
            route_of(path, &store).or_else(|| gateway.contains_key(path).then(|| path.clone()));
        if let Some(route) = route {
            covered
                .entry(route)
                .or_default()
                .extend(methods.iter().cloned());
        }
    }
    for (path, methods) in store.iter().chain(gateway.iter()) {
        let doc_methods = covered
            .get(path)
            .unwrap_or_else(|| panic!("route {path} is not in openapi/trialbridge.yaml"));
        assert!(
            methods.is_subset(doc_methods),
            "{path}: served {methods:?}, documented {doc_methods:?}"
        );
    }
    // The gateway's paths name the gateway's server.
    for path in gateway
        .keys()
        .filter(|p| !["/livez", "/readyz"].contains(&p.as_str()))
    {
        assert!(
            doc["paths"][path]["servers"][0]["url"]
                .as_str()
                .is_some_and(|u| u.ends_with(":8081")),
            "{path} is the gateway's: {}",
            doc["paths"][path]
        );
    }

    // Every documented path and method is routed.
    let root = s.base.trim_end_matches("/fhir").to_string();
    for (path, methods) in &documented {
        if gateway.contains_key(path) && !store.contains_key(path) {
            continue;
        }
        let route = route_of(path, &store)
            .unwrap_or_else(|| panic!("documented {path} matches no route of the store"));
        let served = &store[&route];
        assert!(
            methods.is_subset(served),
            "{path}: documented {methods:?}, the route {route} serves {served:?}"
        );
        let concrete = path
            .replace("{type}", "Observation")
            .replace("{id}", "x")
            .replace("{vid}", "1")
            .replace("{compartment}", "Observation")
            .replace("{file}", "Observation.ndjson")
            .replace("{job}", "0123456789abcdef0123456789abcdef");
        for m in methods {
            let r = client()
                .request(
                    m.to_uppercase().parse().unwrap(),
                    format!("{root}{concrete}"),
                )
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            // Not the fallback, not a wrong method, and not a wider route that took the
            // operation name for a resource type.
            assert!(
                !body.contains("no endpoint at")
                    && status != 405
                    && !body.contains("is not a FHIR R4 resource type"),
                "{m} {path}: {status} {body}"
            );
        }
    }
}

/// schemathesis (PyPI) against the running store, from `/openapi.json`: bounded in examples
/// per operation and in time; the checks are "no 5xx" and "the response is what the
/// description says" (status code, content type, headers, schema).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_response() {
    let s = TestStore::start().await;
    integration_tests::put_patients(&s, "st", 3).await;
    let root = s.base.trim_end_matches("/fhir").to_string();
    let python = std::env::var("TRIALBRIDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let report = s.dir.path().join("schemathesis.json");
    let run = tokio::process::Command::new(&python)
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{root}/openapi.json"))
        .args(["--url", &root])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        .args(["--header", &format!("Authorization: Bearer {}", system_token())])
        .args(["--header", "X-Reason-For-Change: schemathesis"])
        // The gateway's paths have their own server; they are not this store's.
        .args(["--exclude-path-regex", "^/(hl7v2|enrolments|dead-letters|status|audit|messages|app$|app/settings\\.json$)"])
        // Bounded in examples per operation (about 9,000 requests in all); `--max-time` would
        // instead keep fuzzing until its budget is spent, so the time bound is the timeout below.
        // One worker: with the seed, the same draws in the same order on every run (with two,
        // thread timing decided which draw reached hypothesis's lambda describer at a deep
        // stack, where CPython 3.11's `ast` fails with "recursion depth mismatch").
        .args(["--max-examples", "8", "--seed", "20261128", "--workers", "1"])
        .args(["--request-timeout", "30", "--no-shrink"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--report", "json", "--report-json-path"])
        .arg(&report)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(900), run)
        .await
        .expect("schemathesis finishes within 15 minutes")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("operations") || stdout.contains("Operations"),
        "schemathesis did not run (run `bash scripts/test.sh` to create the test venv): {stdout}\n{stderr}"
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{}\n{stderr}",
        stdout
            .lines()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `/openapi.json`, as the running store serves it, passes openapi-spec-validator (PyPI), the
/// validator OpenAPI tooling and code generators use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_description_passes_openapi_spec_validator() {
    let s = TestStore::start().await;
    let url = s
        .url("/openapi.json")
        .replace("/fhir/openapi.json", "/openapi.json");
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let file = s.dir.path().join("openapi.json");
    std::fs::write(&file, text).unwrap();
    let python = std::env::var("TRIALBRIDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = tokio::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .await
        .expect("run openapi-spec-validator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
