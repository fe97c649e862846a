//! One trace from the hospital to the trial database: the site gateway and the trial store run
//! as two processes (`trialbridge gateway`, `trialbridge store`) exporting OTLP/HTTP to a
//! receiver in this test. An HL7 v2 message sent over MLLP, its forward from the gateway's
//! outbox and the store's write share one trace id; the change feed carries the same trace on.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use integration_tests::{client, install_test_key, token, Role};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use trialbridge_feed::change_feed_client::ChangeFeedClient;
use trialbridge_feed::SubscribeRequest;

const ORU: &str = "MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|LAB-TRACE-1|P|2.5.1\rPID|1||4711^^^KH-NORD^MR||Muster^Erika||19880412|F\rOBR|1|||SCREEN^Screening|||20260302093000+0100\rOBX|1|NM|29463-7^Body weight^LN||68|kg^^UCUM|||||F|||20260302093000+0100\r";

/// `(service.name, span)` of every span the receiver got.
type Spans = Arc<Mutex<Vec<(String, Value)>>>;

/// An OTLP/HTTP receiver (JSON encoding) on 127.0.0.1; returns its endpoint.
async fn receiver(spans: Spans) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let spans = spans.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut out = spans.lock().unwrap();
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or("")
                        .to_string();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            out.push((service.clone(), span.clone()));
                        }
                    }
                }
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn traced(cmd: &mut Command, endpoint: &str, data: &std::path::Path) {
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("TRIALBRIDGE_DATA_DIR", data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
}

/// The trial store as a process; its FHIR base and its change feed's address.
async fn store(endpoint: &str, dir: &std::path::Path) -> (Child, String, String) {
    let db = format!("sqlite://{}", dir.join("store.db").display());
    let mut cmd =
        integration_tests::store_command(env!("CARGO_BIN_EXE_trialbridge-under-test"), &db, dir);
    traced(&mut cmd, endpoint, dir);
    let mut child = cmd.spawn().expect("start the store");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), out.next_line())
        .await
        .expect("base URL in time")
        .unwrap()
        .expect("a line");
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let feed = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), err.next_line())
            .await
            .expect("the feed's address in time")
            .unwrap()
            .expect("a line");
        if let Some(a) = line.split("change feed (gRPC) listening on ").nth(1) {
            break format!("http://{}", a.trim());
        }
    };
    // Keep draining stderr so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
    (child, base, feed)
}

/// The site gateway as a process forwarding to `base`; its MLLP and HTTP addresses.
async fn gateway(endpoint: &str, dir: &std::path::Path, base: &str) -> (Child, SocketAddr, String) {
    // The gateway's API takes the test tokens (the local profile's key in its data directory).
    install_test_key(dir);
    let (mllp, http) = (
        integration_tests::free_port(),
        integration_tests::free_port(),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"));
    cmd.arg("gateway")
        .env("TRIALBRIDGE_MLLP_LISTEN", format!("127.0.0.1:{mllp}"))
        .env("TRIALBRIDGE_GATEWAY_LISTEN", format!("127.0.0.1:{http}"))
        .env("TRIALBRIDGE_SITE", "site-01")
        .env("TRIALBRIDGE_STORE_URL", base)
        .env(
            "TRIALBRIDGE_STORE_TOKEN",
            token(Role::Site, &["mesemcart-site-01"], ""),
        );
    traced(&mut cmd, endpoint, dir);
    let child = cmd.spawn().expect("start the gateway");
    let http = format!("http://127.0.0.1:{http}");
    for _ in 0..300 {
        if let Ok(r) = reqwest::get(format!("{http}/readyz")).await {
            if r.status().is_success() {
                return (child, format!("127.0.0.1:{mllp}").parse().unwrap(), http);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway did not become ready");
}

/// Sends one message over MLLP; returns the ACK.
async fn mllp(addr: SocketAddr, message: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&trialbridge_hl7v2::mllp::frame(message.as_bytes()))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(b"\x1c\r") {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("an ACK in time")
            .unwrap();
        assert!(n > 0, "the gateway closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn named<'a>(spans: &'a [(String, Value)], name: &str) -> Vec<&'a (String, Value)> {
    spans.iter().filter(|(_, s)| s["name"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_spans_the_mllp_message_the_forward_and_the_store_write() {
    let spans: Spans = Arc::default();
    let endpoint = receiver(spans.clone()).await;
    let (store_dir, gateway_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_store, base, feed) = store(&endpoint, store_dir.path()).await;
    let (_gateway, mllp_addr, http) = gateway(&endpoint, gateway_dir.path(), &base).await;

    let r = client()
        .post(format!("{http}/enrolments"))
        .json(&json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-001", "gender": "female", "birthYear": 1988}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let ack = mllp(mllp_addr, ORU).await;
    assert!(ack.contains("MSA|AA|LAB-TRACE-1"), "{ack}");

    // The forward reaches the store, and every process exports its spans.
    let mut trace = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let all = spans.lock().unwrap().clone();
        let Some((_, message)) = named(&all, "hl7.message").into_iter().next().cloned() else {
            continue;
        };
        let id = message["traceId"].as_str().unwrap_or("").to_string();
        let in_trace = |name: &str| {
            named(&all, name)
                .into_iter()
                .any(|(_, s)| s["traceId"].as_str() == Some(id.as_str()))
        };
        if ["gateway.forward", "fhir.request", "db.write", "validate"]
            .iter()
            .all(|n| in_trace(n))
        {
            trace = Some((id, all));
            break;
        }
    }
    let (trace_id, all) = trace.unwrap_or_else(|| {
        let names: Vec<String> = spans
            .lock()
            .unwrap()
            .iter()
            .map(|(svc, s)| format!("{svc}:{} {}", s["name"], s["traceId"]))
            .collect();
        panic!("no trace spans the message, the forward and the store write: {names:#?}")
    });
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    let one = |name: &str| -> (String, Value) {
        named(&all, name)
            .into_iter()
            .find(|(_, s)| s["traceId"] == trace_id.as_str())
            .cloned()
            .unwrap()
    };
    let (message_service, message) = one("hl7.message");
    let (forward_service, forward) = one("gateway.forward");
    let (request_service, request) = one("fhir.request");
    let (_, write) = one("db.write");
    // Two processes, one trace: the forward is a child of the message, the store's request a
    // child of the forward (its traceparent header), the write a child of the request.
    assert_eq!(message_service, "site-gateway");
    assert_eq!(forward_service, "site-gateway");
    assert_eq!(request_service, "trial-store");
    assert_eq!(forward["parentSpanId"], message["spanId"]);
    assert_eq!(request["parentSpanId"], forward["spanId"]);
    assert_eq!(write["parentSpanId"], request["spanId"]);
    assert!(!named(&all, "hl7.map").is_empty(), "the mapping is traced");

    // The change feed carries the trace of the write on.
    let feed_url = feed.clone();
    let mut c = ChangeFeedClient::connect(feed).await.unwrap();
    let mut req = tonic::Request::new(SubscribeRequest {
        after_sequence: 0,
        resource_types: vec!["Observation".into()],
        follow: false,
    });
    let bearer = format!("Bearer {}", token(Role::Warehouse, &[], ""));
    req.metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let mut stream = c.subscribe(req).await.unwrap().into_inner();
    let mut carried = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        carried.push(e.traceparent);
    }
    assert!(!carried.is_empty(), "the Observation is in the feed");
    for t in &carried {
        assert_eq!(
            t.split('-').nth(1),
            Some(trace_id.as_str()),
            "the feed event's traceparent {t} is of the message's trace"
        );
    }

    // ...to the warehouse: `trialbridge sync` applies the event in a span of the same trace,
    // a child of the store write the feed names.
    let server = std::env::var("TRIALBRIDGE_TEST_POSTGRES_URL").expect(
        "TRIALBRIDGE_TEST_POSTGRES_URL names no PostgreSQL: run the tests with `bash scripts/test.sh`",
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let warehouse = integration_tests::postgres_database(
        &server,
        &format!("wh_trace_{}_{nanos}", std::process::id()),
    )
    .await;
    let sync_dir = tempfile::tempdir().unwrap();
    let mut sync = Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"));
    sync.args(["sync", "--from", &feed_url, "--postgres", &warehouse])
        .env("TRIALBRIDGE_TOKEN", token(Role::Warehouse, &[], ""));
    traced(&mut sync, &endpoint, sync_dir.path());
    let out = sync.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parent = carried[0].split('-').nth(2).unwrap().to_string();
    let mut applied = None;
    for _ in 0..100 {
        let all = spans.lock().unwrap().clone();
        applied = named(&all, "warehouse.apply")
            .into_iter()
            .find(|(_, s)| s["traceId"] == trace_id.as_str())
            .cloned();
        if applied.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (service, apply) = applied.expect("a warehouse.apply span in the message's trace");
    assert_eq!(service, "warehouse-sync");
    assert_eq!(apply["parentSpanId"], parent.as_str());
}
