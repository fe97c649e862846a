//! Every value reaches the right subject exactly once, or is refused loudly: the
//! reproductions of framing, identity, merge, enrolment, control-id and resend defects, each
//! through the gateway's MLLP listener into a real trial store.

use std::time::Duration;

use integration_tests::gateway::{exchange, msa, read_frame, staff, TestGateway};
use integration_tests::{get_json, TestStore};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use trialbridge_hl7v2::mllp::{frame, VT};

/// An ORU^R01 with one body weight of `kg` for the patient `pid3` (a PID-3 value).
fn oru(control: &str, pid3: &str, kg: &str) -> String {
    format!(
        "MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1\rPID|1||{pid3}||Muster^Erika||19880412|F\rOBR|1|||W^Weight|||20260302093000+0100\rOBX|1|NM|29463-7^Body weight^LN||{kg}|kg^^UCUM|||||F|||20260302093000+0100\r"
    )
}

async fn start() -> (TestStore, TestGateway, tempfile::TempDir) {
    let store = TestStore::start().await;
    let dir = tempfile::tempdir().unwrap();
    let g = TestGateway::start_in(dir.path(), &store.base, |_| {}).await;
    (store, g, dir)
}

/// The weights stored for a subject's Patient, once the outbox is empty.
async fn weights(store: &TestStore, g: &TestGateway, patient: &str) -> Vec<String> {
    settle(g).await;
    let b = get_json(&store.url(&format!(
        "Observation?subject=Patient/{patient}&code=http://loinc.org|29463-7&_count=100"
    )))
    .await;
    let mut out: Vec<String> = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"]["valueQuantity"]["value"].to_string())
        .collect();
    out.sort();
    out
}

/// Waits until the gateway's outbox is empty.
async fn settle(g: &TestGateway) {
    for _ in 0..200 {
        let s = g.get("/status").await;
        if s["messages_outbox"].as_u64().unwrap_or(0) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox did not empty: {}", g.get("/status").await);
}

async fn send(g: &TestGateway, message: &str) -> String {
    let mut s = TcpStream::connect(g.mllp).await.unwrap();
    exchange(&mut s, &frame(message.as_bytes()))
        .await
        .expect("an ACK")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_messages_in_one_frame_are_refused_whole() {
    let (store, g, _dir) = start().await;
    g.enrol(json!({"mrn": "A", "authority": "KH-NORD", "subjectId": "MC-01-001"}))
        .await;
    g.enrol(json!({"mrn": "B", "authority": "KH-NORD", "subjectId": "MC-01-002"}))
        .await;
    let both = oru("MSG-A", "A^^^KH-NORD^MR", "70") + &oru("MSG-B", "B^^^KH-NORD^MR", "80");
    let ack = send(&g, &both).await;
    let (code, id) = msa(&ack);
    assert_eq!((code.as_str(), id.as_str()), ("AR", "MSG-A"), "{ack}");
    assert!(
        ack.contains("ERR||MSH^"),
        "the ERR names the second MSH: {ack}"
    );
    assert!(weights(&store, &g, "mc-01-001").await.is_empty());
    assert!(weights(&store, &g, "mc-01-002").await.is_empty());
    // Sent as the protocol says, each arrives on its own subject.
    assert_eq!(
        msa(&send(&g, &oru("MSG-A", "A^^^KH-NORD^MR", "70")).await).0,
        "AA"
    );
    assert_eq!(
        msa(&send(&g, &oru("MSG-B", "B^^^KH-NORD^MR", "80")).await).0,
        "AA"
    );
    assert_eq!(weights(&store, &g, "mc-01-001").await, ["70"]);
    assert_eq!(weights(&store, &g, "mc-01-002").await, ["80"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_end_byte_drops_the_cut_message_unacknowledged() {
    let (store, g, _dir) = start().await;
    g.enrol(json!({"mrn": "A", "authority": "KH-NORD", "subjectId": "MC-01-001"}))
        .await;
    g.enrol(json!({"mrn": "B", "authority": "KH-NORD", "subjectId": "MC-01-002"}))
        .await;
    let mut s = TcpStream::connect(g.mllp).await.unwrap();
    // A's frame loses its FS: B's VT arrives while A is open.
    let mut bytes = vec![VT];
    bytes.extend_from_slice(oru("LOST-A", "A^^^KH-NORD^MR", "70").as_bytes());
    bytes.extend(frame(oru("LOST-B", "B^^^KH-NORD^MR", "80").as_bytes()));
    s.write_all(&bytes).await.unwrap();
    let ack = read_frame(&mut s, Duration::from_secs(3)).await.unwrap();
    assert_eq!(msa(&ack), ("AA".into(), "LOST-B".into()), "B's own ACK");
    // Exactly one ACK: A was never acknowledged, so its sender resends it.
    assert!(read_frame(&mut s, Duration::from_millis(500))
        .await
        .is_none());
    assert_eq!(weights(&store, &g, "mc-01-001").await, Vec::<String>::new());
    assert_eq!(weights(&store, &g, "mc-01-002").await, ["80"]);
    assert_eq!(g.get("/status").await["mllp_frames_abandoned_total"], 1);
    // The resend of A lands on A.
    assert_eq!(
        msa(&exchange(
            &mut s,
            &frame(oru("LOST-A", "A^^^KH-NORD^MR", "70").as_bytes())
        )
        .await
        .unwrap())
        .0,
        "AA"
    );
    assert_eq!(weights(&store, &g, "mc-01-001").await, ["70"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_of_several_patients_in_one_message_go_to_each_one() {
    let (store, g, _dir) = start().await;
    g.enrol(json!({"mrn": "A", "authority": "KH-NORD", "subjectId": "MC-01-001"}))
        .await;
    g.enrol(json!({"mrn": "B", "authority": "KH-NORD", "subjectId": "MC-01-002"}))
        .await;
    // One ORU^R01 with two PATIENT_RESULT groups (and a third patient not in the trial).
    let two = oru("MULTI-1", "A^^^KH-NORD^MR", "70")
        + "PID|2||B^^^KH-NORD^MR||Other^Paul\rOBR|1|||W|||20260302093000+0100\rOBX|1|NM|29463-7^Body weight^LN||80|kg^^UCUM|||||F|||20260302093000+0100\r"
        + "PID|3||C^^^KH-NORD^MR||Third^Tom\rOBR|1|||W|||20260302093000+0100\rOBX|1|NM|29463-7^Body weight^LN||90|kg^^UCUM|||||F|||20260302093000+0100\r";
    assert_eq!(msa(&send(&g, &two).await).0, "AA");
    assert_eq!(weights(&store, &g, "mc-01-001").await, ["70"]);
    assert_eq!(weights(&store, &g, "mc-01-002").await, ["80"]);
    let all = get_json(&store.url("Observation?_summary=count")).await;
    assert_eq!(
        all["total"], 2,
        "the third patient's value stays at the site"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_needs_the_assigning_authority() {
    let (store, g, _dir) = start().await;
    // An enrolment without an authority is refused, naming the element.
    let r = staff()
        .post(g.url("/enrolments"))
        .json(&json!({"mrn": "123456789", "subjectId": "MC-01-001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("authority is required"));
    g.enrol(json!({"mrn": "123456789", "authority": "KH-NORD", "subjectId": "MC-01-001"}))
        .await;
    g.enrol(json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-002"}))
        .await;
    g.enrol(json!({"mrn": "4711", "authority": "KH-SUED", "subjectId": "MC-01-003"}))
        .await;
    // The same number as another authority's social-security number: somebody else.
    assert_eq!(
        msa(&send(&g, &oru("SSN-1", "123456789^^^USSSA^SS", "70")).await).0,
        "AA"
    );
    // A bare number that two enrolments share: an identity problem, never a guess.
    assert_eq!(msa(&send(&g, &oru("BARE-1", "4711", "75")).await).0, "AA");
    settle(&g).await;
    for p in ["mc-01-001", "mc-01-002", "mc-01-003"] {
        assert!(weights(&store, &g, p).await.is_empty(), "{p}");
    }
    let dead = g.get("/dead-letters").await;
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["control_id"], "BARE-1");
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap()
        .contains("no assigning authority"));
    let status = g.get("/status").await;
    assert_eq!(status["identity_problems_total"], 1, "{status}");
    // With its authority the value goes to the right one of the two.
    assert_eq!(
        msa(&send(&g, &oru("SUED-1", "4711^^^KH-SUED^MR", "76")).await).0,
        "AA"
    );
    assert_eq!(weights(&store, &g, "mc-01-003").await, ["76"]);
    assert!(weights(&store, &g, "mc-01-002").await.is_empty());
    // A re-pointing of an enrolled MRN to another subject is refused: remove it first.
    let r = staff()
        .post(g.url("/enrolments"))
        .json(&json!({"mrn": "4711", "authority": "KH-SUED", "subjectId": "MC-01-004"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Every key-list change is in the gateway's audit log with old and new subject.
    let audit = g.get("/audit").await;
    let enrols: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "enrol")
        .collect();
    assert_eq!(enrols.len(), 3, "{audit}");
    assert!(enrols
        .iter()
        .all(|e| e["who"] == "test-site" && e["detail"]["new"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_with_two_pairs_merges_pair_by_pair() {
    let (store, g, _dir) = start().await;
    g.enrol(json!({"mrn": "12345", "authority": "KH-NORD", "subjectId": "MC-01-001"}))
        .await;
    g.enrol(json!({"mrn": "145", "authority": "KH-NORD", "subjectId": "MC-01-002"}))
        .await;
    let a40 = "MSH|^~\\&|KIS|KH-NORD|TB|SPONSOR|20260302100000+0100||ADT^A40^ADT_A39|MERGE-1|P|2.5\rEVN|A40|20260302100000+0100\rPID|1||12345^^^KH-NORD^MR\rMRG|999^^^KH-NORD^MR\rPID|2||145^^^KH-NORD^MR\rMRG|146^^^KH-NORD^MR\r";
    assert_eq!(msa(&send(&g, a40).await).0, "AA");
    // Patient 145's old MRN routes to patient 145's subject, 12345's old one to 12345's.
    assert_eq!(
        msa(&send(&g, &oru("AFTER-1", "146^^^KH-NORD^MR", "61")).await).0,
        "AA"
    );
    assert_eq!(
        msa(&send(&g, &oru("AFTER-2", "999^^^KH-NORD^MR", "62")).await).0,
        "AA"
    );
    assert_eq!(weights(&store, &g, "mc-01-002").await, ["61"]);
    assert_eq!(weights(&store, &g, "mc-01-001").await, ["62"]);
    let merges: Vec<Value> = g
        .get("/audit")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "merge")
        .cloned()
        .collect();
    assert_eq!(merges.len(), 2, "{merges:?}");
    assert!(merges
        .iter()
        .all(|e| e["who"].as_str().unwrap().contains("MERGE-1")));
    // A merge that joins two enrolled subjects waits for a person.
    let join = a40
        .replace("MERGE-1", "MERGE-2")
        .replace("MRG|999", "MRG|145")
        .replace("PID|2||145^^^KH-NORD^MR\rMRG|146^^^KH-NORD^MR\r", "");
    assert_eq!(msa(&send(&g, &join).await).0, "AA");
    let dead = g.get("/dead-letters").await;
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("two enrolled subjects"),
        "{dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_mrn_never_erases_the_subjects_patient() {
    let (store, g, _dir) = start().await;
    g.enrol(json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-001", "gender": "female", "birthYear": 1988}))
        .await;
    settle(&g).await;
    g.enrol(json!({"mrn": "A123", "authority": "AOK", "subjectId": "MC-01-001"}))
        .await;
    settle(&g).await;
    let p = get_json(&store.url("Patient/mc-01-001")).await;
    assert_eq!(
        (p["gender"].as_str(), p["birthDate"].as_str()),
        (Some("female"), Some("1988")),
        "{p}"
    );
    let history = get_json(&store.url("Patient/mc-01-001/_history")).await;
    assert_eq!(
        history["entry"].as_array().map(Vec::len),
        Some(1),
        "no version without news: {history}"
    );
    // Naming one fact changes that fact only.
    g.enrol(
        json!({"mrn": "A123", "authority": "AOK", "subjectId": "MC-01-001", "gender": "other"}),
    )
    .await;
    settle(&g).await;
    let p = get_json(&store.url("Patient/mc-01-001")).await;
    assert_eq!(
        (p["gender"].as_str(), p["birthDate"].as_str()),
        (Some("other"), Some("1988")),
        "{p}"
    );
    // An ADT without PID-7/PID-8 leaves the Patient as it is.
    let adt = "MSH|^~\\&|KIS|KH-NORD|TB|SPONSOR|20260302081500+0100||ADT^A04^ADT_A01|ADT-1|P|2.5\rEVN|A04|20260302081500+0100\rPID|1||4711^^^KH-NORD^MR||Muster^Erika\rPV1|1|O|ORTHO||||||||||||||||V1\r";
    assert_eq!(msa(&send(&g, adt).await).0, "AA");
    settle(&g).await;
    let p = get_json(&store.url("Patient/mc-01-001")).await;
    assert_eq!(
        (p["gender"].as_str(), p["birthDate"].as_str()),
        (Some("other"), Some("1988")),
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reused_control_id_with_new_content_waits_for_a_person() {
    let (store, g, _dir) = start().await;
    g.enrol(json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-001"}))
        .await;
    let first = oru("RESET-1", "4711^^^KH-NORD^MR", "70");
    let ack = send(&g, &first).await;
    assert_eq!(msa(&ack).0, "AA");
    // The sender reset its counter: same control id, new content.
    let second = oru("RESET-1", "4711^^^KH-NORD^MR", "80");
    let nak = send(&g, &second).await;
    assert_eq!(msa(&nak).0, "AE", "{nak}");
    assert!(
        nak.contains("|205^") && nak.contains("control id 'RESET-1' was used before"),
        "{nak}"
    );
    // The first one resent is a duplicate: its own first ACK, nothing new.
    assert_eq!(send(&g, &first).await, ack);
    assert_eq!(weights(&store, &g, "mc-01-001").await, ["70"]);
    let dead = g.get("/dead-letters").await;
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    let id = dead[0]["id"].as_i64().unwrap();
    // A person decides it is a new message: replayed, it becomes its own Observation.
    let r = g.replay(id).await;
    assert_eq!(r["result"], "queued", "{r}");
    assert_eq!(weights(&store, &g, "mc-01-001").await, ["70", "80"]);
    assert_eq!(g.get("/status").await["control_ids_reused_total"], 1);
}

/// Versions in the store of a type, counted from its type history.
async fn versions(store: &TestStore, ty: &str) -> u64 {
    get_json(&store.url(&format!("{ty}/_history?_count=1000"))).await["entry"]
        .as_array()
        .map_or(0, |a| a.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resend_after_a_crash_writes_no_new_versions() {
    let store = TestStore::start().await;
    let dir = tempfile::tempdir().unwrap();
    let g = TestGateway::start_in(dir.path(), &store.base, |_| {}).await;
    g.enrol(json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-001", "gender": "female", "birthYear": 1988}))
        .await;
    for i in 0..25 {
        let m = oru(
            &format!("CRASH-{i}"),
            "4711^^^KH-NORD^MR",
            &format!("7{}.{i}", i % 10),
        );
        assert_eq!(msa(&send(&g, &m).await).0, "AA");
    }
    settle(&g).await;
    let before = (
        versions(&store, "Observation").await,
        versions(&store, "Provenance").await,
        versions(&store, "Patient").await,
    );
    assert_eq!(before, (25, 25, 1));
    let db = g.database.clone();
    g.stop().await;
    // The crash came after the store's commit and before the gateway's: every message is
    // still in the outbox when the gateway starts again.
    let c = rusqlite::Connection::open(&db).unwrap();
    let n = c
        .execute(
            "UPDATE message SET state = 'outbox' WHERE state = 'forwarded'",
            [],
        )
        .unwrap();
    assert_eq!(n, 26);
    drop(c);
    let g = TestGateway::start_in(dir.path(), &store.base, |_| {}).await;
    settle(&g).await;
    assert_eq!(g.get("/status").await["messages_forwarded"], 26);
    let after = (
        versions(&store, "Observation").await,
        versions(&store, "Provenance").await,
        versions(&store, "Patient").await,
    );
    assert_eq!(after, before, "a resend changes nothing in the history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_control_byte_of_a_message_reaches_its_ack() {
    let (_store, g, _dir) = start().await;
    let m = oru("CTL\x07\x1b1", "4711^^^KH-NORD^MR", "70").replace("|LAB|", "|LAB\x01|");
    let ack = send(&g, &m).await;
    assert!(
        !ack.bytes().any(|b| b < 0x20 && b != b'\r'),
        "control bytes echoed: {ack:?}"
    );
    assert_eq!(msa(&ack), ("AA".into(), "CTL1".into()));
}
