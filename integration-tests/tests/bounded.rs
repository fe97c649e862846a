//! A bounded answer to every request: the trial store in a process of its own, its peak
//! resident memory (VmHWM, reset before each request through /proc/PID/clear_refs) measured
//! around the requests that once exhausted it.
//!
//! The bound: the chart gives the store 1 GiB. One request may raise the peak by at most
//! [`MAX_GROWTH_MIB`] above what the process held before it — a quarter of the limit, so that
//! four such requests at once still fit beside the store's own caches — and the resident size
//! afterwards stays within the same bound of where it started. The requests are the ones of the
//! reproduction: a 1.2 MB `$validate` of 400,000 empty objects (once 1.16 GB), the same shape at
//! 12 MB (under the 16 MB body limit; once 8.6 GB), a batch of 500 searches (+430 MB) and a
//! `_revinclude` over 20,000 Observations (a 7 MB answer).

use std::time::Duration;

use integration_tests::{client_with, token, Role};
use serde_json::{json, Value};

/// Most a single request may raise the store's peak resident memory, MiB.
const MAX_GROWTH_MIB: u64 = 256;

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Resets the peak (VmHWM) to the current resident size.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

struct Measured {
    label: &'static str,
    before_mib: u64,
    peak_mib: u64,
    after_mib: u64,
    status: u16,
    bytes: usize,
}

async fn measure(
    pid: u32,
    label: &'static str,
    request: reqwest::RequestBuilder,
) -> (Measured, Value) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    reset_peak(pid);
    let before_mib = status_kib(pid, "VmRSS:") / 1024;
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    let peak_mib = status_kib(pid, "VmHWM:") / 1024;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_mib = status_kib(pid, "VmRSS:") / 1024;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (
        Measured {
            label,
            before_mib,
            peak_mib,
            after_mib,
            status,
            bytes: body.len(),
        },
        v,
    )
}

fn empty_objects(n: usize) -> String {
    let mut s = String::with_capacity(n * 3 + 64);
    s.push_str("{\"resourceType\":\"Observation\",\"extension\":[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{}");
    }
    s.push_str("]}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_cannot_exhaust_the_stores_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("store.db").display());
    let mut cmd = integration_tests::store_command(
        env!("CARGO_BIN_EXE_trialbridge-under-test"),
        &db,
        dir.path(),
    );
    cmd.stderr(std::process::Stdio::null());
    let (child, base) = integration_tests::spawn_with_base(&mut cmd).await;
    let pid = child.id().unwrap();
    let system = integration_tests::client();
    let warehouse = client_with(&token(Role::Warehouse, &[], ""));

    // 20,000 Observations of one patient.
    let patient = json!({"resourceType": "Patient", "id": "mc-01-p"});
    let r = system
        .put(format!("{base}/Patient/mc-01-p"))
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for chunk in 0..10 {
        let entries: Vec<Value> = (0..2000)
            .map(|i| {
                let id = format!("o-{chunk}-{i}");
                json!({"resource": {"resourceType": "Observation", "id": id, "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}], "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                    "subject": {"reference": "Patient/mc-01-p"},
                    "effectiveDateTime": "2026-03-02",
                    "valueQuantity": {"value": 70 + i % 20, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}},
                    "request": {"method": "PUT", "url": format!("Observation/{id}")}})
            })
            .collect();
        let r = system
            .post(&base)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Bundle", "type": "batch", "entry": entries}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let mut seen = Vec::new();
    // $validate of 400,000 empty objects (1.2 MB) and of 4,000,000 (12 MB).
    for (label, n) in [
        ("$validate, 1.2 MB of empty objects", 400_000),
        ("$validate, 12 MB of empty objects", 4_000_000),
    ] {
        let body = empty_objects(n);
        let (m, oo) = measure(
            pid,
            label,
            warehouse
                .post(format!("{base}/Observation/$validate"))
                .header("content-type", "application/fhir+json")
                .body(body),
        )
        .await;
        let issues = oo["issue"].as_array().map_or(0, Vec::len);
        assert!(issues <= 101, "{label}: {issues} issues");
        // Either every issue up to the cap and a last one saying how many more, or the whole
        // body refused as too costly to parse.
        let refused = oo["issue"][0]["code"] == "too-costly";
        assert!(
            refused || oo.to_string().contains("more"),
            "{label}: the last issue says how many more: {}",
            oo["issue"]
                .as_array()
                .and_then(|a| a.last())
                .cloned()
                .unwrap_or_default()
        );
        seen.push(m);
    }
    // A batch of 500 searches, each asking for 1,000 Observations.
    let entries: Vec<Value> = (0..500)
        .map(|_| json!({"request": {"method": "GET", "url": "Observation?_count=1000"}}))
        .collect();
    let (m, b) = measure(
        pid,
        "batch of 500 searches",
        warehouse
            .post(&base)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Bundle", "type": "batch", "entry": entries}).to_string()),
    )
    .await;
    assert!(
        m.bytes <= 17 << 20,
        "the batch answer is capped: {} bytes",
        m.bytes
    );
    assert_eq!(
        b["entry"].as_array().map_or(0, Vec::len),
        500,
        "one entry per request"
    );
    seen.push(m);
    // _revinclude of every Observation of the patient.
    let (m, oo) = measure(
        pid,
        "_revinclude over 20,000 Observations",
        warehouse.get(format!(
            "{base}/Patient?_id=mc-01-p&_revinclude=Observation:subject"
        )),
    )
    .await;
    assert_eq!(m.status, 400, "{oo}");
    assert_eq!(oo["issue"][0]["code"], "too-costly", "{oo}");
    seen.push(m);

    for m in &seen {
        eprintln!(
            "{}: HTTP {}, {} bytes; RSS {} MiB before, peak {} MiB, {} MiB after",
            m.label, m.status, m.bytes, m.before_mib, m.peak_mib, m.after_mib
        );
    }
    for m in &seen {
        assert!(
            m.peak_mib <= m.before_mib + MAX_GROWTH_MIB,
            "{}: peak {} MiB from {} MiB",
            m.label,
            m.peak_mib,
            m.before_mib
        );
        assert!(
            m.after_mib <= m.before_mib + MAX_GROWTH_MIB,
            "{}: {} MiB after, {} MiB before",
            m.label,
            m.after_mib,
            m.before_mib
        );
    }
    drop(child);
}
