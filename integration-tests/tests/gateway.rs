//! The site gateway end to end: a real third-party MLLP client (`mllp_send` from PyPI `hl7`)
//! sends a MesemCart patient's messages; AA comes back with the right MSA-2 only once stored;
//! the pseudonymised data reaches the trial store, and nothing that identifies the patient
//! does. Hostile bytes on the listener get AR/AE or a clean close, and the next message is
//! still acknowledged.

use std::time::Duration;

use integration_tests::gateway::{exchange, mllp_send, msa, staff, TestGateway};
use integration_tests::{get_json, TestStore};
use serde_json::{json, Value};
use site_gateway::Gateway;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn start_gateway(store: &TestStore) -> TestGateway {
    start_gateway_with(store, None).await.0
}

async fn start_gateway_with(
    store: &TestStore,
    ehr: Option<site_gateway::ehr_pull::EhrConfig>,
) -> (TestGateway, Gateway) {
    let dir = tempfile::tempdir().unwrap().keep();
    let g = TestGateway::start_in(&dir, &store.base, |c| {
        c.max_connections = 16;
        c.ehr = ehr;
    })
    .await;
    let gateway = g.gateway.clone();
    (g, gateway)
}

const ADT: &str = "MSH|^~\\&|KIS|KH-NORD|TB|SPONSOR|20260302081500+0100||ADT^A04^ADT_A01|{ID}|P|2.5\rEVN|A04|20260302081500+0100\rPID|1||4711^^^KH-NORD^MR~A123456789^^^AOK^NII||Muster^Erika^^^^^L||19880412|F|||Hauptstr. 5^^Berlin^^10115^DEU||030 1234567\rPV1|1|O|ORTHO^^^KH-NORD||||||||||||||||V998877|||||||||||||||||||||||||20260302081500+0100\r";

const ORU: &str = "MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|{ID}|P|2.5.1\rPID|1||4711^^^KH-NORD^MR||Muster^Erika||19880412|F|||Hauptstr. 5^^Berlin\rOBR|1|||SCREEN^Screening|||20260302093000+0100\rOBX|1|NM|BMI^Body mass index^L||27.4|kg/m2^^UCUM|18.5-25|H|||F|||20260302093000+0100\rOBX|2|NM|29463-7^Body weight^LN||68|kg^^UCUM|||||F|||20260302093000+0100\rOBX|3|NM|718-7^Hemoglobin^LN||13.1|g/dL^^UCUM|||||F|||20260302093000+0100\rNTE|1||Patientin Erika Muster nuechtern\r";

fn msg(template: &str, id: &str) -> String {
    template.replace("{ID}", id)
}

async fn wait_for_count(store: &TestStore, query: &str, n: u64) -> Value {
    for _ in 0..100 {
        let b = get_json(&store.url(query)).await;
        if b["total"].as_u64() == Some(n) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{query} never reached {n}: {}",
        get_json(&store.url(query)).await
    );
}

async fn enrol(g: &TestGateway) {
    g.enrol(json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-001", "gender": "female", "birthYear": 1988}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mllp_send_to_the_trial_store_pseudonymised() {
    let store = TestStore::start().await;
    let g = start_gateway(&store).await;
    // Not enrolled yet: acknowledged, nothing leaves, only a counter remains.
    let ack = mllp_send(g.mllp, &msg(ORU, "LAB-0001")).await;
    assert_eq!(msa(&ack), ("AA".into(), "LAB-0001".into()));
    let status = get_json(&g.url("/status")).await;
    assert_eq!(status["not_enrolled_total"], 1, "{status}");
    enrol(&g).await;
    let ack = mllp_send(g.mllp, &msg(ADT, "KIS-0001")).await;
    assert_eq!(msa(&ack), ("AA".into(), "KIS-0001".into()));
    let ack = mllp_send(g.mllp, &msg(ORU, "LAB-0002")).await;
    assert_eq!(msa(&ack), ("AA".into(), "LAB-0002".into()));
    // The discharge (A03) of the same visit updates the Encounter the A04 created.
    let discharge = msg(ADT, "KIS-0002").replace("ADT^A04^ADT_A01", "ADT^A03^ADT_A03");
    assert_eq!(msa(&mllp_send(g.mllp, &discharge).await).0, "AA");
    let enc = wait_for_count(
        &store,
        "Encounter?subject=Patient/mc-01-001&status=finished&_summary=count",
        1,
    )
    .await;
    assert_eq!(enc["total"], 1);
    assert_eq!(
        get_json(&store.url("Encounter?_summary=count")).await["total"],
        1
    );
    // BMI (a local code, translated by the study's ConceptMap) and weight arrive; hemoglobin is
    // outside the trial's dataset and stays at the site.
    let obs = wait_for_count(
        &store,
        "Observation?subject=Patient/mc-01-001&_summary=count",
        2,
    )
    .await;
    assert_eq!(obs["total"], 2);
    let bmi =
        get_json(&store.url("Observation?subject=Patient/mc-01-001&code=http://loinc.org|39156-5"))
            .await;
    let o = &bmi["entry"][0]["resource"];
    assert_eq!(o["valueQuantity"]["value"].to_string(), "27.4");
    assert_eq!(o["effectiveDateTime"], "2026-03-02T09:30:00+01:00");
    assert_eq!(
        o["extension"][0]["valueReference"]["reference"],
        "ResearchStudy/mesemcart-site-01"
    );
    let patient = get_json(&store.url("Patient/mc-01-001")).await;
    assert_eq!(
        (patient["gender"].as_str(), patient["birthDate"].as_str()),
        (Some("female"), Some("1988"))
    );
    // One Provenance per message forwarded (A04, ORU, A03).
    let prov = wait_for_count(&store, "Provenance?_summary=count", 3).await;
    assert_eq!(prov["total"], 3);
    // The same message again: AA again, stored once.
    let ack = mllp_send(g.mllp, &msg(ORU, "LAB-0002")).await;
    assert_eq!(msa(&ack), ("AA".into(), "LAB-0002".into()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get_json(&store.url("Observation?_summary=count")).await["total"],
        2
    );
    assert_eq!(get_json(&g.url("/status")).await["duplicates_total"], 1);
    // Nothing that identifies the patient reached the store.
    let mut everything = String::new();
    for t in [
        "Patient",
        "Observation",
        "Encounter",
        "Provenance",
        "Condition",
        "Procedure",
    ] {
        everything.push_str(
            &get_json(&store.url(&format!("{t}?_count=1000")))
                .await
                .to_string(),
        );
    }
    // (The sending system and facility stay in the Provenance: they name the source for
    // source-data verification, not the patient.)
    for secret in [
        "Muster",
        "Erika",
        "\"4711\"",
        "A123456789",
        "1988-04-12",
        "19880412",
        "Hauptstr",
        "Berlin",
        "030 1234567",
        "V998877",
        "nuechtern",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} reached the trial store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unmapped_codes_wait_in_the_dead_letter_queue() {
    let store = TestStore::start().await;
    let g = start_gateway(&store).await;
    // Every counter is shown from the start, as 0.
    let status = g.get("/status").await;
    for key in [
        "dead_letters",
        "outbox",
        "dead_letters_total",
        "queued_total",
        "duplicates_total",
        "received_last_hour",
        "mllp_connections_refused_total",
    ] {
        assert_eq!(status[key], 0, "{key}: {status}");
    }
    enrol(&g).await;
    let unknown = msg(ORU, "LAB-0100").replace("BMI^Body mass index^L", "KNIE-SCORE^Knee score^L");
    let ack = mllp_send(g.mllp, &unknown).await;
    assert_eq!(msa(&ack).0, "AA");
    let dead = g.get("/dead-letters").await;
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("KNIE-SCORE"),
        "{dead}"
    );
    let id = dead[0]["id"].as_i64().unwrap();
    let one = g.get(&format!("/dead-letters/{id}")).await;
    assert!(one["message"].as_str().unwrap().contains("KNIE-SCORE"));
    let r = g.replay(id).await;
    assert!(
        r["result"].as_str().unwrap().starts_with("still dead"),
        "{r}"
    );
    let r = staff()
        .delete(g.url(&format!("/dead-letters/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(g.get("/dead-letters").await.as_array().unwrap().is_empty());
    // `/status` says what is there now apart from what was ever counted: no dead letter is
    // left, one was counted, and what the gateway took in within the hour (the enrolment and
    // the message) is counted by the hour.
    let status = g.get("/status").await;
    assert_eq!(status["dead_letters"], 0, "{status}");
    assert_eq!(status["dead_letters_total"], 1, "{status}");
    assert_eq!(status["received_last_hour"], 2, "{status}");
}

fn framed(m: &[u8]) -> Vec<u8> {
    trialbridge_hl7v2::mllp::frame(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bytes_get_a_nak_and_the_listener_keeps_serving() {
    let store = TestStore::start().await;
    let g = start_gateway(&store).await;
    let mut s = TcpStream::connect(g.mllp).await.unwrap();
    let good = |n: u32| framed(msg(ORU, &format!("OK-{n}")).as_bytes());
    let mut big = vec![b'X'; 70 * 1024];
    big.splice(0..0, b"MSH|^~\\&|".iter().copied());
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("garbage", framed(b"HELLO WORLD"), &["AR"]),
        ("binary", framed(&[0, 1, 2, 0xff, 0xfe, 7]), &["AR"]),
        ("truncated MSH", framed(b"MSH|^~"), &["AE"]),
        (
            "missing encoding characters",
            framed(b"MSH||A|B|C|D|1||ORU^R01|X1|P|2.5\r"),
            &["AE"],
        ),
        (
            "duplicate encoding characters",
            framed(b"MSH|^^\\&|A|B|C|D|1||ORU^R01|X2|P|2.5\r"),
            &["AE"],
        ),
        (
            "batch envelope with a wrong count",
            framed(b"BHS|^~\\&|A\rMSH|^~\\&|A|B|C|D|1||ORU^R01|X3|P|2.5\rPID|1||1\rBTS|2\r"),
            &["AR"],
        ),
        (
            "unsupported type",
            framed(b"MSH|^~\\&|A|B|C|D|1||SIU^S12|X4|P|2.5\rPID|1||1\r"),
            &["AR"],
        ),
        (
            "unsupported version",
            framed(b"MSH|^~\\&|A|B|C|D|1||ORU^R01|X5|P|3.0\rPID|1||1\r"),
            &["AR"],
        ),
        (
            "bad number",
            framed(msg(ORU, "X6").replace("||27.4|", "||27,4|").as_bytes()),
            &["AE"],
        ),
        ("oversize frame", framed(&big), &["AR"]),
        (
            "BOM",
            framed(&[b"\xEF\xBB\xBF".as_slice(), msg(ORU, "X7").as_bytes()].concat()),
            &["AA"],
        ),
    ];
    for (i, (name, bytes, expected)) in cases.into_iter().enumerate() {
        let ack = exchange(&mut s, &bytes)
            .await
            .unwrap_or_else(|| panic!("{name}: no answer"));
        let (code, _) = msa(&ack);
        assert!(
            expected.contains(&code.as_str()),
            "{name}: {code} in {ack:?}"
        );
        if code != "AA" {
            assert!(ack.contains("\rERR|"), "{name}: no ERR segment in {ack:?}");
        }
        // The next good message on the same connection is acknowledged.
        let ack = exchange(&mut s, &good(i as u32))
            .await
            .unwrap_or_else(|| panic!("after {name}: no answer"));
        assert_eq!(msa(&ack), ("AA".into(), format!("OK-{i}")), "after {name}");
    }
    // A frame that never ends, then the sender goes away: a clean close, nothing stored.
    let mut t = TcpStream::connect(g.mllp).await.unwrap();
    t.write_all(b"\x0bMSH|^~\\&|A|B|C|D|1||ORU^R01|NEVER|P|2.5\r")
        .await
        .unwrap();
    drop(t);
    // The listener still serves new connections.
    let mut u = TcpStream::connect(g.mllp).await.unwrap();
    let ack = exchange(&mut u, &good(99)).await.unwrap();
    assert_eq!(msa(&ack), ("AA".into(), "OK-99".into()));
}

/// A stand-in OAuth2 token endpoint (client credentials) that counts its calls.
async fn token_endpoint(calls: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> String {
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |body: String| {
            let calls = calls.clone();
            async move {
                assert!(
                    body.contains("grant_type=client_credentials")
                        && body.contains("client_id=trialbridge"),
                    "{body}"
                );
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                axum::Json(
                    // The stand-in EHR is a trial store: it accepts the test tokens.
                    json!({"access_token": integration_tests::system_token(), "token_type": "bearer", "expires_in": 3600}),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ehr_pull_brings_each_new_version_once() {
    let store = TestStore::start().await;
    let ehr = TestStore::start().await;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let token_url = token_endpoint(calls.clone()).await;
    let mrn_system = "urn:oid:1.2.276.0.76.4.8.9.1";
    let config = site_gateway::ehr_pull::EhrConfig {
        base: ehr.base.clone(),
        mrn_system: mrn_system.into(),
        oauth: Some((token_url, "trialbridge".into(), "s3cret".into())),
        every: Duration::from_secs(3600),
    };
    let (g, gateway) = start_gateway_with(&store, Some(config.clone())).await;
    // The EHR: the patient with name and address, 120 weights (paged), a hemoglobin, a
    // diagnosis, a procedure.
    let put = |path: String, v: Value| {
        let url = ehr.url(&path);
        async move {
            let r = integration_tests::put_fhir(url, v.to_string())
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_success(),
                "{path}: {}",
                r.text().await.unwrap()
            );
        }
    };
    put("Patient/ehr-77".into(), json!({"resourceType":"Patient","id":"ehr-77","identifier":[{"system":mrn_system,"value":"4711"}],"name":[{"family":"Muster","given":["Erika"]}],"birthDate":"1988-04-12","address":[{"line":["Hauptstr. 5"],"city":"Berlin"}]})).await;
    for i in 0..120 {
        put(format!("Observation/w{i}"), json!({"resourceType":"Observation","id":format!("w{i}"),"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},"subject":{"reference":"Patient/ehr-77"},"effectiveDateTime":format!("2026-03-{:02}T08:00:00+01:00", 1 + i % 28),"valueQuantity":{"value":60 + i % 10,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},"note":[{"text":"Frau Muster, nüchtern"}]})).await;
    }
    put("Observation/hb".into(), json!({"resourceType":"Observation","id":"hb","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"718-7"}]},"subject":{"reference":"Patient/ehr-77"},"effectiveDateTime":"2026-03-01T08:00:00+01:00","valueQuantity":{"value":13.1,"unit":"g/dL","system":"http://unitsofmeasure.org","code":"g/dL"}})).await;
    put("Condition/oa".into(), json!({"resourceType":"Condition","id":"oa","subject":{"reference":"Patient/ehr-77"},"code":{"coding":[{"system":"http://fhir.de/CodeSystem/bfarm/icd-10-gm","code":"M94.26"}]}})).await;
    put("Procedure/asc".into(), json!({"resourceType":"Procedure","id":"asc","status":"completed","subject":{"reference":"Patient/ehr-77"},"code":{"coding":[{"system":"http://fhir.de/CodeSystem/bfarm/ops","code":"1-697.7"}]},"performedDateTime":"2026-03-02"})).await;
    enrol(&g).await;
    let stored = site_gateway::ehr_pull::poll_once(&gateway, &config)
        .await
        .unwrap();
    assert_eq!(
        stored, 123,
        "120 weights, the hemoglobin (kept at the site), the diagnosis, the procedure"
    );
    wait_for_count(
        &store,
        "Observation?subject=Patient/mc-01-001&_summary=count",
        120,
    )
    .await;
    wait_for_count(
        &store,
        "Condition?subject=Patient/mc-01-001&_summary=count",
        1,
    )
    .await;
    wait_for_count(
        &store,
        "Procedure?subject=Patient/mc-01-001&_summary=count",
        1,
    )
    .await;
    assert!(
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the client-credentials token was fetched"
    );
    // Nothing new: nothing pulled. A new version of one result: pulled once, stored as an update.
    assert_eq!(
        site_gateway::ehr_pull::poll_once(&gateway, &config)
            .await
            .unwrap(),
        0
    );
    put("Observation/w5".into(), json!({"resourceType":"Observation","id":"w5","status":"amended","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},"subject":{"reference":"Patient/ehr-77"},"effectiveDateTime":"2026-03-06T08:00:00+01:00","valueQuantity":{"value":71.5,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}})).await;
    assert_eq!(
        site_gateway::ehr_pull::poll_once(&gateway, &config)
            .await
            .unwrap(),
        1
    );
    wait_for_count(
        &store,
        "Observation?subject=Patient/mc-01-001&status=amended&_summary=count",
        1,
    )
    .await;
    let amended =
        get_json(&store.url("Observation?subject=Patient/mc-01-001&status=amended")).await;
    assert_eq!(
        amended["entry"][0]["resource"]["valueQuantity"]["value"].to_string(),
        "71.5"
    );
    assert_eq!(
        get_json(&store.url("Observation?_summary=count")).await["total"],
        120
    );
    // The Provenance names the EHR resource version; no name, address or note reached the store.
    let prov = get_json(&store.url("Provenance?_count=1000"))
        .await
        .to_string();
    assert!(
        prov.contains(&format!("{}/Observation/w5/_history/2", ehr.base)),
        "provenance of the new version"
    );
    let everything = get_json(&store.url("Observation?_count=1000"))
        .await
        .to_string()
        + &prov;
    for secret in [
        "Muster",
        "Erika",
        "Hauptstr",
        "1988-04-12",
        "nüchtern",
        "\"4711\"",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} reached the trial store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_post_of_a_message_gets_the_same_acknowledgement() {
    let store = TestStore::start().await;
    let g = start_gateway(&store).await;
    enrol(&g).await;
    let post = |body: String| {
        let url = format!("{}/hl7v2", g.http);
        async move {
            staff()
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let ack = post(msg(ORU, "HTTP-1")).await;
    assert_eq!(msa(&ack), ("AA".into(), "HTTP-1".into()));
    wait_for_count(
        &store,
        "Observation?subject=Patient/mc-01-001&_summary=count",
        2,
    )
    .await;
    // The same message over MLLP afterwards is a duplicate: AA, nothing new.
    let again = mllp_send(g.mllp, &msg(ORU, "HTTP-1")).await;
    assert_eq!(msa(&again), ("AA".into(), "HTTP-1".into()));
    let bad =
        post("MSH|^~\\&|LAB|KH|TB|SP|1||ORU^R01|HTTP-2|P|2.5\rOBX|1|NM|x^y^LN||1,5|||||F\r".into())
            .await;
    assert_eq!(msa(&bad).0, "AE", "{bad}");
    assert!(bad.contains("ERR|"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_received_message_by_message_and_acknowledged_together() {
    let store = TestStore::start().await;
    let g = start_gateway(&store).await;
    enrol(&g).await;
    let batch = format!(
        "FHS|^~\\&|LAB\rBHS|^~\\&|LAB\r{}{}BTS|2\rFTS|1\r",
        msg(ORU, "B-1"),
        msg(ORU, "B-2")
    );
    let mut s = TcpStream::connect(g.mllp).await.unwrap();
    let ack = exchange(&mut s, &framed(batch.as_bytes()))
        .await
        .expect("a batch ACK");
    // A file is answered as a file: FHS, a batch of ACKs per batch, FTS.
    assert!(ack.starts_with("FHS|"), "{ack:?}");
    assert!(
        ack.contains("MSA|AA|B-1") && ack.contains("MSA|AA|B-2"),
        "{ack:?}"
    );
    assert!(ack.contains("\rBTS|2\r"), "{ack:?}");
    assert!(ack.trim_end().ends_with("FTS|1"), "{ack:?}");
    wait_for_count(
        &store,
        "Observation?subject=Patient/mc-01-001&_summary=count",
        4,
    )
    .await;
}

/// `trialbridge hl7 send --file` sends a file's messages once each, as written (framed or
/// not, CRLF or CR), prints each ACK with the line of its message, and fails when a message
/// is not accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hl7_send_sends_each_message_of_a_file_once_and_prints_its_ack() {
    let store = TestStore::start().await;
    let g = start_gateway(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("two.hl7");
    // The first message with CRLF segment ends, the second with CR: as people's files are.
    let content = format!("{}{}", msg(ORU, "SEND-1"), msg(ADT, "SEND-2")).replacen(
        '\r',
        "\r\n",
        ORU.matches('\r').count(),
    );
    std::fs::write(&file, content).unwrap();
    let send = |file: std::path::PathBuf| {
        let to = g.mllp.to_string();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"))
                .args(["hl7", "send", "--to", &to, "--file"])
                .arg(file)
                .output()
                .await
                .unwrap()
        }
    };
    let out = send(file).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acks: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(acks.len(), 2, "{stdout}");
    assert_eq!(acks[0]["msa"], "MSA|AA|SEND-1");
    assert_eq!(acks[0]["line"], 1);
    assert_eq!(acks[1]["msa"], "MSA|AA|SEND-2");
    assert_eq!(acks[1]["line"], 8);

    // The README's file: one message in MLLP framing.
    let framed = dir.path().join("framed.hl7");
    std::fs::write(&framed, format!("\x0b{}\x1c\r", msg(ORU, "SEND-4"))).unwrap();
    let out = send(framed).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"msa\":\"MSA|AA|SEND-4\""));

    // A message the gateway refuses (no PID: nobody to attribute the result to).
    let bad = dir.path().join("bad.hl7");
    let no_pid: String = msg(ORU, "SEND-3")
        .split('\r')
        .filter(|s| !s.starts_with("PID"))
        .map(|s| format!("{s}\r"))
        .collect();
    std::fs::write(&bad, no_pid).unwrap();
    let out = send(bad).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let ack: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_ne!(ack["ack"], "AA", "{stdout}");
    assert!(!ack["err"].as_array().unwrap().is_empty(), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 1 messages were not accepted"));
    g.stop().await;
}
