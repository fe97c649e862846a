//! `kill -9` of trialbridge (store and gateway) in the middle of a 10,000-message MLLP ingest,
//! then a restart on the same databases: every message that got AA reaches the trial store
//! exactly once. The sender behaves like a hospital interface engine: a message without an
//! ACK is sent again after the restart.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::{client, get_json};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use trialbridge_hl7v2::mllp::{frame, FrameEvent, Framer};

const MESSAGES: usize = 10_000;

async fn start(dir: &std::path::Path, ports: (u16, u16)) -> (Child, String) {
    integration_tests::install_test_key(dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(["--mllp-listen", &format!("127.0.0.1:{}", ports.0)])
        .args(["--gateway-listen", &format!("127.0.0.1:{}", ports.1)])
        .env(
            "TRIALBRIDGE_DATABASE_URL",
            format!("sqlite://{}", dir.join("store.db").display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start trialbridge");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (child, base)
}

fn message(k: usize) -> Vec<u8> {
    frame(format!(
        "MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|C{k:05}|P|2.5.1\rPID|1||4711^^^KH-NORD^MR||Muster^Erika||19880412|F\rOBX|1|NM|BMI^Body mass index^L||{}.{}|kg/m2^^UCUM|||||F|||20260302093000+0100\r",
        20 + k % 10,
        k % 10
    ).as_bytes())
}

/// Sends messages `todo` over one connection; records which got AA; stops at the first error.
async fn sender(addr: SocketAddr, todo: Vec<usize>, acked: Arc<Mutex<BTreeSet<usize>>>) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let mut framer = Framer::new(1 << 20);
    let mut buf = vec![0u8; 8192];
    for k in todo {
        if s.write_all(&message(k)).await.is_err() {
            return;
        }
        let ack = loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    if let Some(FrameEvent::Frame(f)) = framer.push(&buf[..n]).into_iter().next() {
                        break f;
                    }
                }
                _ => return,
            }
        };
        if String::from_utf8_lossy(&ack).contains(&format!("MSA|AA|C{k:05}")) {
            acked.lock().unwrap().insert(k);
        }
    }
}

async fn send_all(addr: SocketAddr, todo: Vec<usize>, acked: Arc<Mutex<BTreeSet<usize>>>) {
    let mut tasks = Vec::new();
    for part in 0..4 {
        let mine: Vec<usize> = todo.iter().copied().filter(|k| k % 4 == part).collect();
        tasks.push(tokio::spawn(sender(addr, mine, acked.clone())));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_message_arrives_exactly_once_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (
        integration_tests::free_port(),
        integration_tests::free_port(),
    );
    let (mut child, _) = start(dir.path(), ports).await;
    let http = format!("http://127.0.0.1:{}", ports.1);
    let r = client()
        .post(format!("{http}/enrolments"))
        .json(&json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-001", "gender": "female", "birthYear": 1988}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mllp: SocketAddr = format!("127.0.0.1:{}", ports.0).parse().unwrap();
    let acked: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    // Kill once a third of the messages are acknowledged, in the middle of the stream.
    let ingest = tokio::spawn(send_all(mllp, (0..MESSAGES).collect(), acked.clone()));
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if acked.lock().unwrap().len() >= MESSAGES / 3 {
            break;
        }
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let _ = ingest.await;
    let before = acked.lock().unwrap().len();
    assert!(before < MESSAGES, "the kill came too late");
    // Restart; send again what got no AA.
    let (mut child, base) = start(dir.path(), ports).await;
    let missing: Vec<usize> = (0..MESSAGES)
        .filter(|k| !acked.lock().unwrap().contains(k))
        .collect();
    send_all(mllp, missing, acked.clone()).await;
    assert_eq!(
        acked.lock().unwrap().len(),
        MESSAGES,
        "every message is acknowledged in the end"
    );
    // Wait for the outbox to drain.
    let mut status = Value::Null;
    for _ in 0..600 {
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
    assert_eq!(status["messages_dead"].as_u64().unwrap_or(0), 0, "{status}");
    // Exactly one Observation and one Provenance per message.
    let count = |q: &str| {
        let url = format!("{base}/{q}");
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["total"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(count("Observation?_summary=count").await, MESSAGES as u64);
    assert_eq!(count("Provenance?_summary=count").await, MESSAGES as u64);
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
