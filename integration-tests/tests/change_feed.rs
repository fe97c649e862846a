//! The change feed: concurrent writers, one reader following `_history?_since` over HTTP and
//! one following the gRPC `ChangeFeed.Subscribe`; every committed version is seen exactly
//! once, in sequence order, by both (a property test over writer plans). Plus resuming from a
//! cursor and who may subscribe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::history::{committed, follow_http, Key};
use integration_tests::{client, put_fhir, token, Role, TestStore};
use proptest::prelude::*;
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use trialbridge_feed::change_feed_client::ChangeFeedClient;
use trialbridge_feed::{ChangeEvent, Operation, SubscribeRequest};

async fn subscribe(
    feed: &str,
    bearer: &str,
    after: i64,
    follow: bool,
) -> Result<tonic::Streaming<ChangeEvent>, tonic::Status> {
    let mut c = ChangeFeedClient::connect(feed.to_string())
        .await
        .expect("connect");
    let mut req = tonic::Request::new(SubscribeRequest {
        after_sequence: after,
        resource_types: vec![],
        follow,
    });
    if !bearer.is_empty() {
        let v: MetadataValue<_> = format!("Bearer {bearer}").parse().unwrap();
        req.metadata_mut().insert("authorization", v);
    }
    c.subscribe(req).await.map(|r| r.into_inner())
}

/// Follows the gRPC feed until `done` and the stream has reached `target` sequences.
async fn follow_grpc(
    feed: String,
    done: Arc<AtomicBool>,
    last: Arc<std::sync::atomic::AtomicI64>,
) -> Vec<ChangeEvent> {
    let mut stream = subscribe(&feed, integration_tests::system_token(), 0, true)
        .await
        .unwrap();
    let mut out: Vec<ChangeEvent> = Vec::new();
    loop {
        if done.load(Ordering::SeqCst)
            && out.last().map_or(0, |e| e.sequence) >= last.load(Ordering::SeqCst)
        {
            return out;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Ok(Ok(Some(e))) => out.push(e),
            Ok(other) => panic!("the feed ended: {other:?}"),
            Err(_) => {} // nothing new yet
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8),
    Delete(u8),
    Post,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12).prop_map(Op::Put),
        2 => (0u8..12).prop_map(Op::Delete),
        2 => Just(Op::Post),
    ]
}

async fn run_plan(plan: Vec<Vec<Op>>) {
    let s = TestStore::start().await;
    let done = Arc::new(AtomicBool::new(false));
    let last = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let http = tokio::spawn(follow_http(s.base.clone(), done.clone()));
    let grpc = tokio::spawn(follow_grpc(s.feed.clone(), done.clone(), last.clone()));
    let mut writers = Vec::new();
    for (w, ops) in plan.into_iter().enumerate() {
        let base = s.base.clone();
        writers.push(tokio::spawn(async move {
            for (i, op) in ops.into_iter().enumerate() {
                let r = match op {
                    Op::Put(k) => put_fhir(format!("{base}/Patient/p{k}"), json!({"resourceType": "Patient", "id": format!("p{k}"), "gender": if i % 2 == 0 { "female" } else { "male" }, "birthDate": format!("19{:02}", 50 + w)}).to_string()).send().await,
                    Op::Delete(k) => client().delete(format!("{base}/Patient/p{k}")).send().await,
                    Op::Post => integration_tests::post_fhir(format!("{base}/Patient"), json!({"resourceType": "Patient", "gender": "other"}).to_string()).send().await,
                };
                assert!(r.unwrap().status().is_success());
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let reference = committed(&s.base).await;
    last.store(
        {
            // The sequence of the newest version: the gRPC follower stops once it has it.
            let mut st = subscribe(&s.feed, integration_tests::system_token(), 0, false)
                .await
                .unwrap();
            let mut m = 0;
            while let Some(e) = st.message().await.unwrap() {
                m = e.sequence;
            }
            m
        },
        Ordering::SeqCst,
    );
    done.store(true, Ordering::SeqCst);
    let by_http = http.await.unwrap();
    let by_grpc = grpc.await.unwrap();
    assert_eq!(by_http, reference, "the _history follower");
    let seqs: Vec<i64> = by_grpc.iter().map(|e| e.sequence).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "gRPC sequences strictly increase"
    );
    let grpc_keys: Vec<Key> = by_grpc
        .iter()
        .map(|e| (e.resource_type.clone(), e.id.clone(), e.version))
        .collect();
    assert_eq!(grpc_keys, reference, "the gRPC follower");
    for e in &by_grpc {
        let want = if e.version == 1 {
            Operation::Create
        } else if e.resource_json.is_empty() {
            Operation::Delete
        } else {
            Operation::Update
        };
        assert_eq!(e.operation(), want, "{e:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]
    #[test]
    fn every_committed_version_is_seen_once_in_order(plan in prop::collection::vec(prop::collection::vec(op(), 10..40), 2..5)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        rt.block_on(run_plan(plan));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_from_its_cursor_and_only_the_warehouse_subscribes() {
    let s = TestStore::start().await;
    integration_tests::put_patients(&s, "r", 30).await;
    let wh = token(Role::Warehouse, &[], "");
    let all: Vec<ChangeEvent> = {
        let mut st = subscribe(&s.feed, &wh, 0, false).await.unwrap();
        let mut v = Vec::new();
        while let Some(e) = st.message().await.unwrap() {
            v.push(e);
        }
        v
    };
    assert_eq!(all.len(), 30);
    // Read ten, drop the stream, resume after the tenth.
    let mut st = subscribe(&s.feed, &wh, 0, true).await.unwrap();
    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(st.message().await.unwrap().unwrap());
    }
    drop(st);
    let mut st = subscribe(&s.feed, &wh, first[9].sequence, false)
        .await
        .unwrap();
    let mut rest = Vec::new();
    while let Some(e) = st.message().await.unwrap() {
        rest.push(e);
    }
    first.extend(rest);
    assert_eq!(first, all);
    // Who may subscribe.
    let refused = subscribe(&s.feed, "", 0, false).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let site = token(Role::Site, &["mesemcart-site-01"], "");
    let refused = subscribe(&s.feed, &site, 0, false).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trialbridge_feed_prints_one_line_per_version() {
    let s = TestStore::start().await;
    integration_tests::put_patients(&s, "f", 5).await;
    let r = client().delete(s.url("Patient/f0")).send().await.unwrap();
    assert!(r.status().is_success());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"))
        .args(["feed", "--from", &s.feed, "--after", "0"])
        .env("TRIALBRIDGE_TOKEN", token(Role::Warehouse, &[], ""))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["operation"], "CREATE");
    assert_eq!(lines[5]["operation"], "DELETE");
    assert_eq!(lines[5]["id"], "f0");
    assert_eq!(lines[5]["version"], 2);
}

/// `trialbridge feed --follow` writes each event as it arrives, not when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trialbridge_feed_follow_writes_lines_while_it_runs() {
    use tokio::io::AsyncBufReadExt;
    let s = TestStore::start().await;
    integration_tests::put_patients(&s, "ff", 2).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"))
        .args(["feed", "--from", &s.feed, "--after", "0", "--follow"])
        .env("TRIALBRIDGE_TOKEN", token(Role::Warehouse, &[], ""))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let wait = std::time::Duration::from_secs(20);
    for _ in 0..2 {
        let line = tokio::time::timeout(wait, lines.next_line())
            .await
            .expect("a line while following")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["resourceType"], "Patient");
    }
    // A write after the catch-up arrives as its own line while the command still runs.
    integration_tests::put_patients(&s, "fg", 1).await;
    let line = tokio::time::timeout(wait, lines.next_line())
        .await
        .expect("the new version's line")
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["id"], "fg0", "{v}");
    child.kill().await.unwrap();
}
