//! The MLLP listener stays available: idle sockets and sockets kept "alive" with a CR cannot
//! lock a new sender out, a frame that never ends is closed after its time, every refused or
//! closed connection is counted, and SIGTERM stops the gateway within its grace period even
//! with a half-open frame.

use std::time::{Duration, Instant};

use integration_tests::gateway::{exchange, msa, read_frame, TestGateway};
use integration_tests::TestStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trialbridge_hl7v2::mllp::frame;

fn oru(control: &str) -> Vec<u8> {
    frame(format!("MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1\rPID|1||4711^^^KH-NORD^MR\rOBX|1|NM|29463-7^Body weight^LN||70|kg^^UCUM|||||F|||20260302093000+0100\r").as_bytes())
}

/// Whether the peer closed the connection within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    let end = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_trickling_sockets_cannot_lock_a_sender_out() {
    let store = TestStore::start().await;
    let dir = tempfile::tempdir().unwrap();
    let g = TestGateway::start_in(dir.path(), &store.base, |c| {
        c.max_connections = 8;
        c.max_connections_per_address = 8;
        c.idle_timeout = Duration::from_secs(3);
    })
    .await;
    // The attacker takes every place: idle sockets, and sockets that send a CR now and then
    // (bytes outside a frame).
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(g.mllp).await.unwrap());
    }
    let mut trickle = Vec::new();
    for _ in 0..4 {
        trickle.push(TcpStream::connect(g.mllp).await.unwrap());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let trickler = tokio::spawn(async move {
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            for s in &mut trickle {
                let _ = s.write_all(b"\r").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trickle
    });
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // A new sender still gets AA, several times over.
    for i in 0..3 {
        let mut s = TcpStream::connect(g.mllp).await.unwrap();
        let ack = exchange(&mut s, &oru(&format!("NEW-{i}")))
            .await
            .expect("the new sender is served");
        assert_eq!(msa(&ack).0, "AA", "{ack}");
    }
    let status = g.get("/status").await;
    assert!(
        status["mllp_connections_evicted_total"].as_u64().unwrap() >= 1,
        "{status}"
    );
    // A CR outside a frame does not keep a connection: the idle timeout counts from the last
    // complete frame.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut trickle = trickler.await.unwrap();
    for s in &mut trickle {
        assert!(closed_within(s, Duration::from_secs(5)).await);
    }
    let status = g.get("/status").await;
    assert_eq!(status["mllp_connections_open"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frame_that_never_ends_is_closed_and_counted() {
    let store = TestStore::start().await;
    let dir = tempfile::tempdir().unwrap();
    let g = TestGateway::start_in(dir.path(), &store.base, |c| {
        c.max_connections = 2;
        c.max_connections_per_address = 2;
        c.frame_timeout = Duration::from_secs(1);
    })
    .await;
    // Two senders dribble a frame byte by byte: both places are busy inside a frame, so a
    // third connection is refused (and counted), not served by closing a busy one.
    let message = oru("SLOW-1");
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(g.mllp).await.unwrap();
        s.write_all(&message[..20]).await.unwrap();
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(g.mllp).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(1)).await);
    let started = Instant::now();
    for s in &mut slow {
        let _ = s.write_all(&message[20..24]).await;
        assert!(
            read_frame(s, Duration::from_secs(3)).await.is_none(),
            "no ACK for a frame that never ended"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let status = g.get("/status").await;
    assert_eq!(status["mllp_frame_timeouts_total"], 2, "{status}");
    assert_eq!(status["mllp_connections_refused_total"], 1, "{status}");
    // The places are free again.
    let mut s = TcpStream::connect(g.mllp).await.unwrap();
    assert_eq!(
        msa(&exchange(&mut s, &oru("AFTER-1")).await.unwrap()).0,
        "AA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_within_the_grace_period_despite_a_half_open_frame() {
    let dir = tempfile::tempdir().unwrap();
    integration_tests::install_test_key(dir.path());
    let (mllp, http) = (
        integration_tests::free_port(),
        integration_tests::free_port(),
    );
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ])
    .args(["--mllp-listen", &format!("127.0.0.1:{mllp}")])
    .args(["--gateway-listen", &format!("127.0.0.1:{http}")])
    .env(
        "TRIALBRIDGE_DATABASE_URL",
        format!("sqlite://{}", dir.path().join("store.db").display()),
    )
    .env("TRIALBRIDGE_SHUTDOWN_GRACE_SECONDS", "2")
    .stderr(std::process::Stdio::null());
    let (mut child, _base) = integration_tests::spawn_with_base(&mut cmd).await;
    let mut s = TcpStream::connect(("127.0.0.1", mllp)).await.unwrap();
    let message = oru("HALF-1");
    s.write_all(&message[..40]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap();
    let started = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the process stopped within its grace period")
        .unwrap();
    let took = started.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(8), "stopping took {took:?}");
    // The half-open frame was never acknowledged: the sender sees its connection end.
    assert!(read_frame(&mut s, Duration::from_millis(500))
        .await
        .is_none());
}
