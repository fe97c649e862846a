//! The attribution invariant, as a property: random ORU^R01 messages for several patients
//! (enrolled ones, one whose MRN another authority also uses, one not enrolled, one sent
//! without an assigning authority), one or two patients per message, sent over several
//! connections at once with random framing (whole, split into pieces, two messages in one
//! frame, a lost end byte, sent twice), with the gateway stopped between receipt and
//! forwarding part way through. Afterwards every Observation in the trial store belongs to
//! the subject enrolled for the PID it followed, every acknowledged value of an enrolled
//! patient is there exactly once, and nothing else is: a message is stored whole, or is in
//! the dead-letter queue, or was never acknowledged. (`gateway_crash.rs` kills the real
//! process with SIGKILL; here the stop is in-process, so that many plans run quickly.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::gateway::{msa, FrameReader, TestGateway};
use integration_tests::{get_json, next_link, TestStore};
use proptest::prelude::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use trialbridge_hl7v2::mllp::{frame, VT};

/// PID-3 of each test patient; the first three are enrolled (MC-01-001..003).
const PATIENTS: [&str; 6] = [
    "P0^^^KH^MR",
    "P1^^^KH^MR",
    "P2^^^KH^MR",
    // The MRN of patient 0 under another authority: somebody else.
    "P0^^^OTHER^MR",
    // Not enrolled.
    "P9^^^KH^MR",
    // Patient 1's number without an authority: an identity problem.
    "P1",
];

#[derive(Debug, Clone)]
enum Framing {
    Whole,
    Split(usize),
    Resend,
    /// Run together with the next message of the plan in one frame.
    WithNext,
    /// The end byte is lost: the next frame on the connection cuts it off.
    LostEnd,
}

#[derive(Debug, Clone)]
struct Planned {
    patients: Vec<usize>,
    framing: Framing,
    connection: usize,
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        4 => Just(Framing::Whole),
        2 => (2usize..6).prop_map(Framing::Split),
        1 => Just(Framing::Resend),
        1 => Just(Framing::WithNext),
        1 => Just(Framing::LostEnd),
    ]
}

fn plan() -> impl Strategy<Value = (Vec<Planned>, usize)> {
    let one = (
        proptest::collection::vec(0usize..6, 1..3),
        framing(),
        0usize..3,
    )
        .prop_map(|(patients, framing, connection)| Planned {
            patients,
            framing,
            connection,
        });
    proptest::collection::vec(one, 2..14).prop_flat_map(|p| {
        let n = p.len();
        (Just(p), 0..=n)
    })
}

/// The weight of patient `p` in group `g` of message `m`: `5p.mmg` kg, so that a stored value
/// names all three.
fn weight(p: usize, m: usize, g: usize) -> String {
    format!("5{p}.{m:02}{g}")
}

fn message(m: usize, patients: &[usize]) -> String {
    let mut s =
        format!("MSH|^~\\&|LAB|KH|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|M-{m}|P|2.5.1\r");
    for (i, &p) in patients.iter().enumerate() {
        s.push_str(&format!(
            "PID|{}||{}||Name{p}^Given\rOBR|1|||W|||20260302093000+0100\rOBX|1|NM|29463-7^Body weight^LN||{}|kg^^UCUM|||||F|||20260302093000+0100\r",
            i + 1,
            PATIENTS[p],
            weight(p, m, i)
        ));
    }
    s
}

/// One write on a connection and how many ACKs it must bring back.
struct Write {
    bytes: Vec<u8>,
    acks: usize,
    /// The messages whose fate its ACKs tell (`None` for a frame refused whole).
    about: Vec<usize>,
    pieces: usize,
}

/// The writes of a plan per connection.
fn writes(plan: &[Planned], range: std::ops::Range<usize>) -> BTreeMap<usize, Vec<Write>> {
    let mut out: BTreeMap<usize, Vec<Write>> = BTreeMap::new();
    let mut m = range.start;
    while m < range.end {
        let p = &plan[m];
        let text = message(m, &p.patients);
        let w = match p.framing {
            Framing::WithNext if m + 1 < range.end => {
                let both = text + &message(m + 1, &plan[m + 1].patients);
                let w = Write {
                    bytes: frame(both.as_bytes()),
                    acks: 1,
                    about: vec![m, m + 1],
                    pieces: 1,
                };
                m += 1;
                w
            }
            Framing::LostEnd => {
                let mut bytes = vec![VT];
                bytes.extend_from_slice(text.as_bytes());
                Write {
                    bytes,
                    acks: 0,
                    about: vec![m],
                    pieces: 1,
                }
            }
            Framing::Resend => {
                let mut bytes = frame(text.as_bytes());
                bytes.extend(frame(text.as_bytes()));
                Write {
                    bytes,
                    acks: 2,
                    about: vec![m],
                    pieces: 1,
                }
            }
            Framing::Split(n) => Write {
                bytes: frame(text.as_bytes()),
                acks: 1,
                about: vec![m],
                pieces: n,
            },
            _ => Write {
                bytes: frame(text.as_bytes()),
                acks: 1,
                about: vec![m],
                pieces: 1,
            },
        };
        out.entry(p.connection).or_default().push(w);
        m += 1;
    }
    out
}

/// Sends each connection's writes in order, all connections at once; returns MSA-1 per
/// message acknowledged.
async fn send(
    g: &TestGateway,
    per_connection: BTreeMap<usize, Vec<Write>>,
) -> BTreeMap<usize, String> {
    let mut tasks = Vec::new();
    for (_, ws) in per_connection {
        let addr = g.mllp;
        tasks.push(tokio::spawn(async move {
            let mut codes = BTreeMap::new();
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut acks = FrameReader::default();
            for w in ws {
                let size = w.bytes.len().div_ceil(w.pieces);
                for piece in w.bytes.chunks(size.max(1)) {
                    s.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
                for _ in 0..w.acks {
                    let ack = acks
                        .next(&mut s, Duration::from_secs(20))
                        .await
                        .expect("an ACK");
                    let (code, id) = msa(&ack);
                    if w.about.len() == 1 {
                        assert_eq!(id, format!("M-{}", w.about[0]));
                    }
                    for &m in &w.about {
                        codes.insert(m, code.clone());
                    }
                }
            }
            codes
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Every body weight in the store: (value, subject).
async fn stored(store: &TestStore) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut url = Some(store.url("Observation?_count=500"));
    while let Some(u) = url {
        let b = get_json(&u).await;
        for e in b["entry"].as_array().into_iter().flatten() {
            let r = &e["resource"];
            out.push((
                r["valueQuantity"]["value"].to_string(),
                r["subject"]["reference"].as_str().unwrap_or("").to_string(),
            ));
        }
        url = next_link(&b);
    }
    out
}

async fn settle(g: &TestGateway) {
    for _ in 0..400 {
        let s = g.get("/status").await;
        if s["messages_outbox"].as_u64().unwrap_or(0) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the outbox did not empty");
}

async fn run(plan: Vec<Planned>, stop_at: usize) {
    let store = TestStore::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Until `stop_at`, the gateway cannot reach the store: what it acknowledges waits in its
    // outbox when it stops.
    // (Port 1: nothing listens there, and no listener of this test can be given it.)
    let dead_store = "http://127.0.0.1:1/fhir".to_string();
    let first = TestGateway::start_in(dir.path(), &dead_store, |_| {}).await;
    for (i, subject) in ["MC-01-001", "MC-01-002", "MC-01-003"].iter().enumerate() {
        first
            .enrol(json!({"mrn": format!("P{i}"), "authority": "KH", "subjectId": subject}))
            .await;
    }
    let mut codes = send(&first, writes(&plan, 0..stop_at)).await;
    first.stop().await;
    let second = TestGateway::start_in(dir.path(), &store.base, |_| {}).await;
    codes.extend(send(&second, writes(&plan, stop_at..plan.len())).await);
    settle(&second).await;
    let got = stored(&store).await;
    // Never another subject.
    for (value, subject) in &got {
        let p: usize = value[1..2].parse().unwrap();
        assert!(p < 3, "a value of patient {p} reached the store: {value}");
        assert_eq!(*subject, format!("Patient/mc-01-{:03}", p + 1), "{value}");
    }
    // Exactly once, and every acknowledged value of enrolled patients is there.
    let values: BTreeSet<&String> = got.iter().map(|(v, _)| v).collect();
    assert_eq!(values.len(), got.len(), "a value stored twice: {got:?}");
    let mut expected = BTreeSet::new();
    for (m, p) in plan.iter().enumerate() {
        let whole_message_ok =
            codes.get(&m).map(String::as_str) == Some("AA") && !p.patients.contains(&5);
        if whole_message_ok {
            expected.extend(
                p.patients
                    .iter()
                    .enumerate()
                    .filter(|(_, &q)| q < 3)
                    .map(|(g, &q)| weight(q, m, g)),
            );
        }
    }
    let got_values: BTreeSet<String> = values.into_iter().cloned().collect();
    assert_eq!(got_values, expected, "codes {codes:?}");
    // What carried the unidentifiable patient waits in the dead-letter queue.
    let dead = second.get("/dead-letters").await;
    let dead: BTreeSet<String> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["control_id"].as_str().unwrap().to_string())
        .collect();
    for (m, p) in plan.iter().enumerate() {
        if codes.get(&m).map(String::as_str) == Some("AA") && p.patients.contains(&5) {
            assert!(dead.contains(&format!("M-{m}")), "M-{m} not in {dead:?}");
        }
    }
    second.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 16, .. ProptestConfig::default() })]

    #[test]
    fn every_stored_value_belongs_to_the_subject_of_its_own_pid((plan, stop_at) in plan()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(plan, stop_at));
    }
}

/// A plan the property found once: duplicates of an unidentifiable patient's message across a
/// stop, beside a frame of two messages.
#[test]
fn a_plan_found_by_the_property() {
    use Framing::*;
    let p = |patients: &[usize], framing: Framing, connection: usize| Planned {
        patients: patients.to_vec(),
        framing,
        connection,
    };
    let plan = vec![
        p(&[4, 0], WithNext, 2),
        p(&[1, 0], Whole, 2),
        p(&[2, 4], Whole, 0),
        p(&[4], Whole, 1),
        p(&[3, 2], Split(3), 0),
        p(&[4, 2], Whole, 0),
        p(&[5, 5], Resend, 1),
        p(&[2], Split(4), 2),
        p(&[5], Whole, 1),
        p(&[2, 1], Whole, 2),
        p(&[3, 5], Resend, 1),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(plan, 9));
}
