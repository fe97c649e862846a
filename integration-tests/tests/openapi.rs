//! The OpenAPI description names only what the server serves: each documented path and method
//! is routed (the answer is not the fallback's "no endpoint").

use integration_tests::{client, repo_root, TestStore};

/// `(path, methods)` of `openapi/trialbridge.yaml`: the keys under `paths:` and their methods.
fn documented() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(repo_root().join("openapi/trialbridge.yaml")).unwrap();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_paths = false;
    for line in text.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            out.push((format!("/{p}"), Vec::new()));
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "post", "put", "delete"].contains(&m) {
                out.last_mut().unwrap().1.push(m.to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_path_is_served() {
    let s = TestStore::start().await;
    let paths = documented();
    assert!(paths.len() >= 8, "{paths:?}");
    for (path, methods) in &paths {
        assert!(!methods.is_empty(), "{path} has no method");
        let concrete = path
            .replace("{type}", "Observation")
            .replace("{id}", "x")
            .replace("{job}", "0123456789abcdef0123456789abcdef");
        let url = format!("{}{}", s.base.trim_end_matches("/fhir"), concrete);
        for m in methods {
            let r = client()
                .request(m.to_uppercase().parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            // Not the fallback, not a wrong method, and not a wider route that took the
            // operation name for a resource type (`/fhir/{type}/{id}/{compartment}`).
            assert!(
                !body.contains("no endpoint at")
                    && status != 405
                    && !body.contains("is not a FHIR R4 resource type"),
                "{m} {path}: {status} {body}"
            );
        }
    }
}
