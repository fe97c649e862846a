//! A site gateway in this process on ephemeral ports, forwarding to a test store, with its API
//! behind the test tokens; and the HL7 helpers the gateway tests share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use site_gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{test_issuer, token, Role, TEST_AUDIENCE};

/// The gateway's site in the tests.
pub const SITE_STUDY: &str = "mesemcart-site-01";

/// The test issuer's keys as the gateway's token check.
pub fn test_tokens() -> Arc<trialbridge_auth::Authenticator> {
    static AUTH: OnceLock<Arc<trialbridge_auth::Authenticator>> = OnceLock::new();
    AUTH.get_or_init(|| {
        let verifier = trialbridge_auth::Verifier::from_jwks(
            &test_issuer().jwks(),
            trialbridge_auth::VerifierSettings {
                issuer: trialbridge_auth::LOCAL_ISSUER.into(),
                audience: TEST_AUDIENCE.into(),
                leeway_seconds: 30,
            },
        )
        .expect("test JWKS");
        Arc::new(trialbridge_auth::Authenticator::fixed(verifier))
    })
    .clone()
}

/// A `site` token of the gateway's site (site staff, the interface engine, the gateway).
pub fn site_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| token(Role::Site, &[SITE_STUDY], ""))
}

/// An HTTP client of the site's staff (a site token, a reason for decisions).
pub fn staff() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", site_token()).parse().expect("header"),
    );
    h.insert(
        "x-reason-for-change",
        reqwest::header::HeaderValue::from_static("integration test"),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client")
}

/// A gateway serving in this process.
pub struct TestGateway {
    /// MLLP address.
    pub mllp: SocketAddr,
    /// HTTP API base (`http://127.0.0.1:PORT`).
    pub http: String,
    /// The gateway itself.
    pub gateway: Gateway,
    /// Its database file.
    pub database: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// A gateway for site-01 with a database in `dir`, forwarding to `store_base` with a site
    /// token; `adjust` may change any setting.
    pub async fn start_in(
        dir: &Path,
        store_base: &str,
        adjust: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let mut config =
            GatewayConfig::new("site-01", store_base, dir.join("gateway.db"), test_tokens());
        config.idle_timeout = Duration::from_secs(5);
        config.max_frame_bytes = 64 * 1024;
        config.store_token = site_gateway::StoreToken::Static(site_token().to_string());
        adjust(&mut config);
        let gateway = Gateway::open(config).expect("open the gateway");
        let mllp = tokio::net::TcpListener::bind(gateway.config.mllp_listen)
            .await
            .expect("bind");
        let api = tokio::net::TcpListener::bind(gateway.config.http_listen)
            .await
            .expect("bind");
        let (mllp_addr, http_addr) = (mllp.local_addr().unwrap(), api.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(site_gateway::serve(gateway.clone(), mllp, api, async {
            let _ = rx.await;
        }));
        Self {
            mllp: mllp_addr,
            http: format!("http://{http_addr}"),
            database: gateway.config.database.clone(),
            gateway,
            stop: Some(tx),
            served: Some(served),
        }
    }

    /// Stops it and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.served.take() {
            let _ = s.await;
        }
    }

    /// `http` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// Enrols a patient as site staff; panics unless 201.
    pub async fn enrol(&self, body: Value) {
        let r = staff()
            .post(self.url("/enrolments"))
            .json(&body)
            .send()
            .await
            .expect("POST /enrolments");
        let status = r.status();
        assert_eq!(status, 201, "{}", r.text().await.unwrap_or_default());
    }

    /// Replays dead letter `id` as site staff; the API's JSON answer (`{"id", "result"}`).
    pub async fn replay(&self, id: i64) -> Value {
        staff()
            .post(self.url(&format!("/dead-letters/{id}/replay")))
            .send()
            .await
            .expect("POST replay")
            .json()
            .await
            .expect("JSON")
    }

    /// GET a JSON answer of the API as site staff.
    pub async fn get(&self, path: &str) -> Value {
        staff()
            .get(self.url(path))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Writes `bytes` and reads one MLLP frame back (None on a close or nothing within 3 s).
pub async fn exchange(s: &mut TcpStream, bytes: &[u8]) -> Option<String> {
    s.write_all(bytes).await.ok()?;
    read_frame(s, Duration::from_secs(3)).await
}

/// Reads one MLLP frame (None on a close or nothing within `wait`), for exchanges that get
/// one answer at a time ([`FrameReader`] for several).
pub async fn read_frame(s: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(wait, s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(&[0x1c, 0x0d]) {
            let start = got.iter().position(|&b| b == 0x0b).map_or(0, |i| i + 1);
            return Some(String::from_utf8_lossy(&got[start..got.len() - 2]).into_owned());
        }
    }
}

/// Reads the frames a connection sends back, one at a time, however they arrive (several
/// ACKs may come in one read).
pub struct FrameReader {
    framer: trialbridge_hl7v2::mllp::Framer,
    pending: std::collections::VecDeque<String>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            framer: trialbridge_hl7v2::mllp::Framer::new(1 << 20),
            pending: Default::default(),
        }
    }
}

impl FrameReader {
    /// The next frame (None on a close or nothing within `wait`).
    pub async fn next(&mut self, s: &mut TcpStream, wait: Duration) -> Option<String> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            let n = tokio::time::timeout(wait, s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            for e in self.framer.push(&buf[..n]) {
                if let trialbridge_hl7v2::mllp::FrameEvent::Frame(f) = e {
                    self.pending
                        .push_back(String::from_utf8_lossy(&f).into_owned());
                }
            }
        }
    }
}

/// MSA-1 and MSA-2 of an ACK.
pub fn msa(ack: &str) -> (String, String) {
    let line = ack
        .split(['\r', '\n'])
        .find(|l| l.starts_with("MSA"))
        .unwrap_or_else(|| panic!("no MSA in {ack:?}"));
    let f: Vec<&str> = line.split('|').collect();
    (f[1].to_string(), f.get(2).unwrap_or(&"").to_string())
}

/// Sends one message with the real third-party client `mllp_send` (PyPI `hl7`); returns what
/// it printed (the ACK).
pub async fn mllp_send(addr: SocketAddr, message: &str) -> String {
    let bin = std::env::var("TRIALBRIDGE_TEST_MLLP_SEND").unwrap_or_else(|_| "mllp_send".into());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.hl7");
    // mllp_send reads its input file as an MLLP stream.
    std::fs::write(&file, trialbridge_hl7v2::mllp::frame(message.as_bytes())).unwrap();
    let out = tokio::process::Command::new(&bin)
        .args(["--port", &addr.port().to_string(), "--file"])
        .arg(&file)
        .arg(addr.ip().to_string())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{bin}: {e}: run `bash scripts/test.sh` (it installs python-hl7) or set TRIALBRIDGE_TEST_MLLP_SEND"));
    assert!(
        out.status.success(),
        "mllp_send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An enrolment body for `mrn` of `authority` as `subject`.
pub fn enrolment(mrn: &str, authority: &str, subject: &str) -> Value {
    json!({"mrn": mrn, "authority": authority, "subjectId": subject})
}
