//! Every body the site gateway sends to the trial store while ingesting the 19 shared
//! FHIR-Converter messages, with each message's patient enrolled, is recorded by a proxy in
//! between and scanned: no name, street, phone, MRN or full birth date of any patient.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use integration_tests::{client, get_json, TestStore};
use serde_json::json;
use site_gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trialbridge_hl7v2::Message;

type Recorded = Arc<Mutex<Vec<String>>>;

/// A proxy that records every body and passes it on to the store.
async fn recording_proxy(store_base: String, recorded: Recorded) -> String {
    async fn pass(
        State((base, rec)): State<(String, Recorded)>,
        body: Bytes,
    ) -> (axum::http::StatusCode, String) {
        rec.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&body).into_owned());
        let r = client()
            .post(format!("{base}/"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .unwrap();
        (
            axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap(),
            r.text().await.unwrap(),
        )
    }
    let app = axum::Router::new()
        .route("/fhir/", axum::routing::post(pass))
        .with_state((store_base, recorded));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/fhir")
}

/// What must never leave the site, from a message's PID.
fn secrets(m: &Message) -> Vec<String> {
    let Some(pid) = m.segment("PID") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for rep in pid.field(3).repetitions().chain(pid.field(2).repetitions()) {
        out.push(rep.component(1).into_owned());
    }
    for rep in pid.field(5).repetitions() {
        out.push(rep.component_part(1).subcomponent(1).into_owned());
        out.push(rep.component(2).into_owned());
    }
    for rep in pid.field(11).repetitions() {
        out.push(rep.component_part(1).subcomponent(1).into_owned());
        out.push(rep.component(3).into_owned());
    }
    for rep in pid.field(13).repetitions() {
        out.push(rep.component(1).into_owned());
    }
    out.push(pid.field(19).component(1).into_owned());
    let dob = pid.field(7).component(1);
    if dob.len() >= 8 {
        out.push(dob[..8].to_string());
        out.push(format!("{}-{}-{}", &dob[..4], &dob[4..6], &dob[6..8]));
    }
    // Short or generic values ("1", "M") would match anything; they identify nobody anyway.
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() >= 5)
        .collect()
}

async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&trialbridge_hl7v2::mllp::frame(bytes))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(&[0x1c, 0x0d]) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed without an ACK");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_identifying_leaves_the_site() {
    let store = TestStore::start().await;
    let recorded: Recorded = Arc::default();
    let proxy = recording_proxy(store.base.clone(), recorded.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::open(GatewayConfig {
        mllp_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.path().join("gateway.db"),
        site: "site-01".into(),
        store_url: proxy,
        utc_offset: "+01:00".into(),
        max_frame_bytes: 1 << 20,
        idle_timeout: Duration::from_secs(5),
        max_connections: 8,
        ehr: None,
        store_token: site_gateway::StoreToken::Static(integration_tests::token(
            integration_tests::Role::Site,
            &["mesemcart-site-01"],
            "",
        )),
    })
    .unwrap();
    let mllp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mllp_addr, http) = (
        mllp.local_addr().unwrap(),
        format!("http://{}", api.local_addr().unwrap()),
    );
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(site_gateway::serve(gateway, mllp, api, async {
        let _ = rx.await;
    }));
    let dir =
        integration_tests::repo_root().join("crates/hl7v2/tests/fixtures/fhir-converter/messages");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 19);
    let mut all_secrets = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).unwrap();
        let m = Message::parse(&bytes).unwrap();
        all_secrets.extend(secrets(&m));
        // Enrol this message's patient (every identifier of PID-3).
        let pid = m.segment("PID").unwrap();
        let ids: Vec<_> = pid
            .field(3)
            .repetitions()
            .filter(|r| !r.component(1).is_empty())
            .map(|r| {
                let auth = r.component_part(4);
                let a = if auth.subcomponent(1).is_empty() {
                    auth.subcomponent(2).into_owned()
                } else {
                    auth.subcomponent(1).into_owned()
                };
                json!({"authority": a, "value": r.component(1)})
            })
            .collect();
        if ids.is_empty() {
            continue;
        }
        let r = client()
            .post(format!("{http}/enrolments"))
            .json(&json!({"identifiers": ids, "subjectId": format!("MC-01-{:03}", i + 1)}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        // Enhanced mode with MSH-15 NE asks for no acknowledgement on the connection.
        if Message::parse(&bytes).unwrap().msh(15).raw() == "NE" {
            let mut s = tokio::net::TcpStream::connect(mllp_addr).await.unwrap();
            s.write_all(&trialbridge_hl7v2::mllp::frame(&bytes))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            *codes.entry("none (NE)".into()).or_default() += 1;
            continue;
        }
        let ack = exchange(mllp_addr, &bytes).await;
        let code = ack
            .split('\r')
            .find(|l| l.contains("MSA|"))
            .and_then(|l| l.split('|').nth(1))
            .unwrap_or("?")
            .to_string();
        *codes.entry(code).or_default() += 1;
    }
    // Original mode: AA; enhanced mode with MSH-15 AL: the commit ACK CA.
    assert_eq!(
        (codes.get("AA"), codes.get("CA"), codes.get("none (NE)")),
        (Some(&15), Some(&2), Some(&2)),
        "{codes:?}"
    );
    let mut status = serde_json::Value::Null;
    for _ in 0..300 {
        status = get_json(&format!("{http}/status")).await;
        if status["messages_outbox"].as_u64().unwrap_or(0) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status["messages_outbox"].as_u64().unwrap_or(0),
        0,
        "{status}"
    );
    // Several messages may travel in one transaction: count messages, not bodies.
    assert!(
        status["messages_forwarded"].as_u64().unwrap_or(0) >= 15,
        "{status}"
    );
    let bodies = recorded.lock().unwrap().clone();
    let sent = bodies.join("\n");
    assert!(
        sent.contains("\"resourceType\":\"Encounter\"")
            && sent.contains("\"resourceType\":\"Condition\""),
        "the clinical data did go out"
    );
    all_secrets.sort();
    all_secrets.dedup();
    assert!(all_secrets.len() > 40, "{all_secrets:?}");
    // A secret counts where it stands as a word of its own (not inside another id or number).
    let standalone = |at: usize, len: usize| {
        let b = sent.as_bytes();
        let before = at.checked_sub(1).map(|i| b[i]);
        let after = b.get(at + len).copied();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    };
    for secret in &all_secrets {
        let hit = sent
            .match_indices(secret.as_str())
            .map(|(i, _)| i)
            .find(|&i| standalone(i, secret.len()));
        if let Some(at) = hit {
            panic!(
                "'{secret}' left the site: ...{}...",
                &sent[at.saturating_sub(200)..(at + 100).min(sent.len())]
            );
        }
    }
}
