//! HL7 v2 fidelity on real-feed shapes, end to end (the real `mllp_send` client, the gateway,
//! the trial store): HL7's explicit null, NM and SN values as HL7 defines them, files of
//! several batches, zone-less times at a German site, table 0396 coding systems, and no free
//! text leaving the site. Each case is a reproduction from a hospital feed.

use std::time::Duration;

use integration_tests::gateway::{mllp_send, msa, TestGateway};
use integration_tests::{get_json, TestStore};
use serde_json::{json, Value};

async fn start(store: &TestStore) -> TestGateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let g = TestGateway::start_in(&dir, &store.base, |_| {}).await;
    g.enrol(json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-001", "gender": "female", "birthYear": 1988}))
        .await;
    g
}

/// The subject's resources of `ty` once the outbox has emptied.
async fn stored(store: &TestStore, g: &TestGateway, ty: &str) -> Vec<Value> {
    for _ in 0..100 {
        let status = g.get("/status").await;
        if status["messages_outbox"].as_i64() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = get_json(&store.url(&format!("{ty}?subject=Patient/mc-01-001&_count=100"))).await;
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect()
}

async fn dead_letters(g: &TestGateway) -> Vec<Value> {
    g.get("/dead-letters")
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

const PID: &str = "PID|1||4711^^^KH-NORD^MR||Muster^Erika||19880412|F|||Hauptstr. 5^^Berlin";

fn oru(id: &str, obx: &[&str]) -> String {
    let mut m = format!("MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|{id}|P|2.5.1\r{PID}\rOBR|1|||SCREEN^Screening|||20260302093000+0100\r");
    for o in obx {
        m.push_str(o);
        m.push('\r');
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hl7_null_is_accepted_in_every_field() {
    let store = TestStore::start().await;
    let g = start(&store).await;
    // A Cerner-style A01: "" in PV1-45 and DG1-5, and in PID-7.
    let adt = "MSH|^~\\&|KIS|KH-NORD|TB|SPONSOR|20260302081500+0100||ADT^A01^ADT_A01|N-1|P|2.5\rEVN|A01|20260302081500+0100\rPID|1||4711^^^KH-NORD^MR||Muster^Erika||\"\"|F\rPV1|1|I|ORTHO^^^KH-NORD||||||||||||||||V42|||||||||||||||||||||||||20260302081500+0100|\"\"\rDG1|1||M94.26^Osteochondrosis^I10||\"\"|F\r";
    let ack = mllp_send(g.mllp, adt).await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    // "" in OBX-14: the observation time is then OBR-7's.
    let ack = mllp_send(
        g.mllp,
        &oru(
            "N-2",
            &["OBX|1|NM|29463-7^Body weight^LN||68|kg^^UCUM|\"\"|\"\"|||F|||\"\""],
        ),
    )
    .await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    let enc = stored(&store, &g, "Encounter").await;
    assert_eq!(enc.len(), 1, "{enc:?}");
    assert!(enc[0]["period"].get("end").is_none(), "{}", enc[0]);
    let obs = stored(&store, &g, "Observation").await;
    assert_eq!(obs.len(), 1, "{obs:?}");
    assert_eq!(obs[0]["effectiveDateTime"], "2026-03-02T09:30:00+01:00");
    assert!(dead_letters(&g).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn numbers_as_hl7_writes_them_are_stored_never_dropped() {
    let store = TestStore::start().await;
    let g = start(&store).await;
    for (id, value, want) in [
        ("NM-1", ".5", 0.5),
        ("NM-2", "072", 72.0),
        ("NM-3", "72.", 72.0),
    ] {
        let ack = mllp_send(
            g.mllp,
            &oru(
                id,
                &[&format!(
                    "OBX|1|NM|29463-7^Body weight^LN||{value}|kg^^UCUM|||||F|||20260302093000+0100"
                )],
            ),
        )
        .await;
        assert_eq!(msa(&ack).0, "AA", "{ack}");
        let obs = stored(&store, &g, "Observation").await;
        assert!(
            obs.iter()
                .any(|o| o["valueQuantity"]["value"].as_f64() == Some(want)),
            "{value} was not stored: {obs:?}"
        );
    }
    assert!(dead_letters(&g).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn structured_numerics_keep_their_unit() {
    let store = TestStore::start().await;
    let g = start(&store).await;
    let ack = mllp_send(
        g.mllp,
        &oru(
            "SN-1",
            &["OBX|1|SN|29463-7^Body weight^LN||>^72|kg^^UCUM|||||F|||20260302093000+0100"],
        ),
    )
    .await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    let obs = stored(&store, &g, "Observation").await;
    assert_eq!(obs.len(), 1, "dead letters: {:?}", dead_letters(&g).await);
    let q = &obs[0]["valueQuantity"];
    assert_eq!(
        (
            q["comparator"].as_str(),
            q["value"].as_f64(),
            q["system"].as_str(),
            q["code"].as_str()
        ),
        (
            Some(">"),
            Some(72.0),
            Some("http://unitsofmeasure.org"),
            Some("kg")
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_of_two_batches_is_taken_batch_by_batch() {
    let store = TestStore::start().await;
    let g = start(&store).await;
    let w = |id: &str, kg: u32| {
        oru(
            id,
            &[&format!(
                "OBX|1|NM|29463-7^Body weight^LN||{kg}|kg^^UCUM|||||F|||2026030209{kg}00+0100"
            )],
        )
    };
    let file = format!(
        "FHS|^~\\&|LAB|KH-NORD\rBHS|^~\\&|LAB|KH-NORD\r{}{}BTS|2\rBHS|^~\\&|LAB|KH-NORD\r{}BTS|1\rFTS|2\r",
        w("B-1", 10),
        w("B-2", 11),
        w("B-3", 12)
    );
    let ack = mllp_send(g.mllp, &file).await;
    let segments: Vec<&str> = ack
        .split(['\r', '\n'])
        .map(str::trim)
        .filter_map(|l| l.get(..3))
        .collect();
    assert_eq!(
        segments,
        ["FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "BTS", "BHS", "MSH", "MSA", "BTS", "FTS"],
        "{ack}"
    );
    assert!(!ack.contains("MSA|AR") && !ack.contains("MSA|AE"), "{ack}");
    assert_eq!(stored(&store, &g, "Observation").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn zone_less_times_follow_the_sites_summer_and_winter_time() {
    let store = TestStore::start().await;
    let g = start(&store).await;
    for (id, ts) in [("T-1", "20260715093000"), ("T-2", "20260115093000")] {
        let ack = mllp_send(
            g.mllp,
            &oru(
                id,
                &[&format!(
                    "OBX|1|NM|29463-7^Body weight^LN||70|kg^^UCUM|||||F|||{ts}"
                )],
            ),
        )
        .await;
        assert_eq!(msa(&ack).0, "AA", "{ack}");
    }
    let mut times: Vec<String> = stored(&store, &g, "Observation")
        .await
        .iter()
        .map(|o| o["effectiveDateTime"].as_str().unwrap_or("").to_string())
        .collect();
    times.sort();
    assert_eq!(
        times,
        ["2026-01-15T09:30:00+01:00", "2026-07-15T09:30:00+02:00"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_without_its_observation_time_never_takes_the_message_time() {
    let store = TestStore::start().await;
    let g = start(&store).await;
    let m = format!("MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|NT-1|P|2.5.1\r{PID}\rOBR|1|||SCREEN^Screening\rOBX|1|NM|29463-7^Body weight^LN||70|kg^^UCUM|||||F\r");
    let ack = mllp_send(g.mllp, &m).await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    let obs = stored(&store, &g, "Observation").await;
    assert!(
        obs.iter()
            .all(|o| o["effectiveDateTime"] != "2026-03-02T10:00:00+01:00"),
        "MSH-7 became an observation time: {obs:?}"
    );
    // The trial's profile needs the time: the result waits in the dead-letter queue.
    let dead = dead_letters(&g).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_code_systems_are_not_site_local() {
    let store = TestStore::start().await;
    let g = start(&store).await;
    // An ICD-9 diagnosis in an admission: the visit still reaches the store.
    let adt = "MSH|^~\\&|KIS|KH-NORD|TB|SPONSOR|20260302081500+0100||ADT^A01^ADT_A01|I9-1|P|2.5\rEVN|A01|20260302081500+0100\rPID|1||4711^^^KH-NORD^MR||Muster^Erika||19880412|F\rPV1|1|I|ORTHO^^^KH-NORD||||||||||||||||V43|||||||||||||||||||||||||20260302081500+0100\rDG1|1||732.7^Osteochondritis dissecans^I9||20260301|F\r";
    let ack = mllp_send(g.mllp, adt).await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    let enc = stored(&store, &g, "Encounter").await;
    assert_eq!(enc.len(), 1, "dead letters: {:?}", dead_letters(&g).await);
    // A lab result outside the dataset, known by an unknown system, holds nothing up.
    let ack = mllp_send(
        g.mllp,
        &oru(
            "I9-2",
            &[
                "OBX|1|NM|2345-7^Glucose^LN^GLU^Glukose^99zzz||95|mg/dL^^UCUM|||||F|||20260302093000+0100",
                "OBX|2|NM|29463-7^Body weight^LN||70|kg^^UCUM|||||F|||20260302093000+0100",
            ],
        ),
    )
    .await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    assert_eq!(stored(&store, &g, "Observation").await.len(), 1);
    assert!(dead_letters(&g).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn free_text_stays_at_the_site() {
    let store = TestStore::start().await;
    let g = start(&store).await;
    let phi = ["Erika", "Muster", "030 1234567", "19880412"];
    let ack = mllp_send(
        g.mllp,
        &oru(
            "FT-1",
            &[
                "OBX|1|NM|29463-7^Gewicht Erika Muster 19880412^LN||70|kg^^UCUM|50-90 (Muster, 030 1234567)|H~A|||F|||20260302093000+0100",
                "OBX|2|NM|29463-7^Erika Muster^LN||71|kg^^UCUM|50-90|N|||F|||20260302094000+0100",
            ],
        ),
    )
    .await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    let obs = stored(&store, &g, "Observation").await;
    assert_eq!(obs.len(), 2, "dead letters: {:?}", dead_letters(&g).await);
    let text = serde_json::to_string(&obs).unwrap();
    for p in phi {
        assert!(!text.contains(p), "{p} left the site: {text}");
    }
    // The study's display; a range from numbers; every interpretation in the v3 system.
    let second = obs
        .iter()
        .find(|o| o["valueQuantity"]["value"] == 71)
        .unwrap();
    assert_eq!(second["code"]["coding"][0]["display"], "Body weight");
    assert_eq!(second["referenceRange"][0]["low"]["value"], 50);
    let first = obs
        .iter()
        .find(|o| o["valueQuantity"]["value"] == 70)
        .unwrap();
    assert!(first.get("referenceRange").is_none(), "{first}");
    let interp: Vec<&str> = first["interpretation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(interp, ["H", "A"]);
}

fn adt(trigger: &str, id: &str, pv1_45: &str) -> String {
    format!("MSH|^~\\&|KIS|KH-NORD|TB|SPONSOR|20260302081500+0100||ADT^{trigger}^ADT_A01|{id}|P|2.5\rEVN|{trigger}|20260302081500+0100\r{PID}\rPV1|1|I|ORTHO^^^KH-NORD||||||||||||||||V77|||||||||||||||||||||||||20260302081500+0100|{pv1_45}\rDG1|1||M93.26^Osteochondrosis dissecans^I10||20260301|F\rPR1|1||1-697.7^Arthroscopy^OPS||20260302090000+0100\r")
}

/// One visit's story, trigger by trigger: its diagnosis and procedure, repeated in every
/// message, are one Condition and one Procedure; a discharge time finishes the Encounter, and
/// a later message that does not repeat it leaves the visit finished (the Encounter is merged).
async fn visit_story(triggers: &[(&str, &str)]) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let store = TestStore::start().await;
    let g = start(&store).await;
    for (i, (trigger, pv1_45)) in triggers.iter().enumerate() {
        let ack = mllp_send(g.mllp, &adt(trigger, &format!("V-{i}"), pv1_45)).await;
        assert_eq!(msa(&ack).0, "AA", "{trigger}: {ack}");
    }
    let enc = stored(&store, &g, "Encounter").await;
    let cond = stored(&store, &g, "Condition").await;
    let proc = stored(&store, &g, "Procedure").await;
    assert!(
        dead_letters(&g).await.is_empty(),
        "{:?}",
        dead_letters(&g).await
    );
    (enc, cond, proc)
}

#[tokio::test(flavor = "multi_thread")]
async fn a01_a08_a03_a08_is_one_visit_with_one_diagnosis_and_one_procedure() {
    let (enc, cond, proc) = visit_story(&[
        ("A01", ""),
        ("A08", ""),
        ("A03", "20260305120000+0100"),
        // A correction after the discharge that does not repeat the discharge time.
        ("A08", ""),
    ])
    .await;
    assert_eq!((enc.len(), cond.len(), proc.len()), (1, 1, 1));
    assert_eq!(enc[0]["status"], "finished", "{}", enc[0]);
    assert_eq!(enc[0]["period"]["end"], "2026-03-05T12:00:00+01:00");
    assert_eq!(cond[0]["onsetDateTime"], "2026-03-01");
    assert!(cond[0].get("recordedDate").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a04_then_an_a08_with_a_discharge_time_finishes_the_visit() {
    let (enc, cond, proc) = visit_story(&[("A04", ""), ("A08", "20260305120000+0100")]).await;
    assert_eq!((enc.len(), cond.len(), proc.len()), (1, 1, 1));
    assert_eq!(enc[0]["status"], "finished", "{}", enc[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hl7_null_in_a_later_message_clears_what_an_earlier_one_said() {
    // The discharge time is deleted by a correction (`""` in PV1-45): the visit is open again.
    let (enc, _, _) =
        visit_story(&[("A01", ""), ("A03", "20260305120000+0100"), ("A08", "\"\"")]).await;
    assert_eq!(enc.len(), 1);
    assert_eq!(enc[0]["status"], "in-progress", "{}", enc[0]);
    assert_eq!(
        enc[0]["period"],
        json!({"start": "2026-03-02T08:15:00+01:00"}),
        "{}",
        enc[0]
    );
}

/// The subject's Observations in the store at `base` (a system token), once the outbox of `g`
/// has emptied.
async fn observations_at(base: &str, g: &TestGateway) -> Vec<Value> {
    for _ in 0..100 {
        if g.get("/status").await["messages_outbox"].as_i64() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = get_json(&format!("{base}/Observation?subject=Patient/mc-01-001")).await;
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_map_fixed_in_the_store_releases_its_dead_letter_and_survives_a_restart() {
    use integration_tests::{client_with, spawn_with_base, store_command, token, Role};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("store.db").display());
    let store_process = || {
        let mut c = store_command(
            env!("CARGO_BIN_EXE_trialbridge-under-test"),
            &db,
            dir.path(),
        );
        c.env("TRIALBRIDGE_LOAD_STUDY", "true");
        c
    };
    let (mut store, base) = spawn_with_base(&mut store_process()).await;
    let gdir = tempfile::tempdir().unwrap();
    let g = TestGateway::start_in(gdir.path(), &base, |_| {}).await;
    g.enrol(json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-001", "gender": "female", "birthYear": 1988}))
        .await;

    // A local code the study's map does not have yet: acknowledged, held as a dead letter.
    let height = "OBX|1|NM|KNIE-GR^Koerpergroesse^L||172|cm^^UCUM|||||F|||20260302093000+0100";
    let ack = mllp_send(g.mllp, &oru("CM-1", &[height])).await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    let dead = dead_letters(&g).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["reason"].as_str().unwrap().contains("KNIE-GR"));

    // The study administrator adds the code to the site's map in the trial store.
    let url = format!("{base}/ConceptMap/mesemcart-site-local-codes");
    let mut map = get_json(&url).await;
    let group = map["group"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|g| g["source"] == "urn:mesemcart:site-01:local" && g["target"] == "http://loinc.org")
        .expect("site-01's LOINC group");
    group["element"].as_array_mut().unwrap().push(json!({
        "code": "KNIE-GR",
        "target": [{"code": "8302-2", "equivalence": "equivalent"}]
    }));
    let admin = client_with(&token(Role::Admin, &[], ""));
    let r = admin
        .put(&url)
        .header("content-type", "application/fhir+json")
        .body(map.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let edited = get_json(&url).await;
    let version = edited["meta"]["versionId"].clone();

    // Replayed, the message goes out with the translated code.
    let id = dead[0]["id"].as_i64().unwrap();
    let r = g.replay(id).await;
    assert_eq!(r["result"], "queued", "{r}");
    let obs = observations_at(&base, &g).await;
    assert_eq!(obs.len(), 1, "{obs:?}");
    assert_eq!(obs[0]["code"]["coding"][0]["code"], "8302-2", "{}", obs[0]);
    assert_eq!(obs[0]["valueQuantity"]["value"], 172);
    assert!(dead_letters(&g).await.is_empty());

    // A restart loads the study again: the administrator's edit stays, no new version.
    store.kill().await.unwrap();
    let (_store, base) = spawn_with_base(&mut store_process()).await;
    let after = get_json(&format!("{base}/ConceptMap/mesemcart-site-local-codes")).await;
    assert_eq!(after["meta"]["versionId"], version, "{after}");
    assert!(after.to_string().contains("KNIE-GR"));
}
