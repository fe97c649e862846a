//! The API behind the monitor workspace: the site worklist (`ResearchStudy/{site}/$sdv`), one
//! verification per version (`$verify` twice is one Provenance), data queries as Tasks
//! (`$raise-query` → the site corrects the value and `$answer`s → `$close`), each step audited
//! and only through its operation, site isolation of all of it, CORS for browser tools, and
//! the local profile's OAuth sign-in (authorization code with PKCE).

use integration_tests::{client_with, repo_root, token, Role, TestStore};
use serde_json::{json, Value};

const S1: &str = "mesemcart-site-01";
const S2: &str = "mesemcart-site-02";

struct Who(reqwest::Client);

fn who(role: Role, sites: &[&str]) -> Who {
    Who(client_with(&token(role, sites, "")))
}

impl Who {
    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        integration_tests::send_fhir(&self.0, method, url, body, "transcription error").await
    }
    async fn get(&self, url: String) -> (u16, Value) {
        self.send(reqwest::Method::GET, url, None).await
    }
    async fn post(&self, url: String, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, url, Some(body)).await
    }
    async fn put(&self, s: &TestStore, v: Value) -> (u16, Value) {
        let path = format!(
            "{}/{}",
            v["resourceType"].as_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        self.send(reqwest::Method::PUT, s.url(&path), Some(v)).await
    }
}

fn example(name: &str) -> Value {
    let p = repo_root().join("studies/mesemcart/examples").join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn text(t: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": "text", "valueString": t}]})
}

/// A store with subject mc-01-001 (screening values) written by site 01.
async fn store_with_subject() -> (TestStore, Who) {
    let s = TestStore::start().await;
    let site = who(Role::Site, &[S1]);
    for f in [
        "Patient-mc-01-001.json",
        "ResearchSubject-mc-01-001.json",
        "Observation-mc-01-001-bmi.json",
        "Observation-mc-01-001-icrs-grade.json",
    ] {
        let (st, b) = site.put(&s, example(f)).await;
        assert!(st == 200 || st == 201, "{f}: {st} {b}");
    }
    (s, site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_worklist_counts_each_subject_and_holds_to_the_monitors_sites() {
    let (s, _site) = store_with_subject().await;
    let mon = who(Role::Monitor, &[S1]);
    let (st, w) = mon.get(s.url(&format!("ResearchStudy/{S1}/$sdv"))).await;
    assert_eq!(st, 200, "{w}");
    assert_eq!(w["total"], 1, "{w}");
    let row = &w["subjects"][0];
    assert_eq!(row["subject"], "ResearchSubject/mc-01-001");
    assert_eq!(row["values"], 3, "{row}");
    assert_eq!(row["unverified"], 3);
    assert_eq!(row["openQueries"], 0);

    // Verify the BMI, then the site corrects it: changed since verification.
    let (st, _) = mon
        .post(
            s.url("Observation/mc-01-001-bmi/$verify"),
            json!({"resourceType": "Parameters"}),
        )
        .await;
    assert_eq!(st, 201);
    let (_, w) = mon.get(s.url(&format!("ResearchStudy/{S1}/$sdv"))).await;
    assert_eq!(w["subjects"][0]["verified"], 1, "{w}");
    let mut bmi = example("Observation-mc-01-001-bmi.json");
    bmi["valueQuantity"]["value"] = json!(27.1);
    let (st, b) = _site.put(&s, bmi).await;
    assert_eq!(st, 200, "{b}");
    let (_, w) = mon.get(s.url(&format!("ResearchStudy/{S1}/$sdv"))).await;
    assert_eq!(w["subjects"][0]["verified"], 0, "{w}");
    assert_eq!(w["subjects"][0]["changedSinceVerification"], 1, "{w}");

    // The main study lists the monitor's sites only; another site's worklist is refused.
    let (st, all) = mon.get(s.url("ResearchStudy/mesemcart/$sdv")).await;
    assert_eq!(st, 200, "{all}");
    assert_eq!(all["sites"], json!([S1]));
    let other = who(Role::Monitor, &[S2]);
    let (st, refused) = other.get(s.url(&format!("ResearchStudy/{S1}/$sdv"))).await;
    assert_eq!(st, 403, "{refused}");
    let (st, own) = other.get(s.url("ResearchStudy/mesemcart/$sdv")).await;
    assert_eq!(st, 200, "{own}");
    assert_eq!(
        own["total"], 0,
        "a site-02 monitor sees no site-01 subject: {own}"
    );
    // Paging: a bad _count names itself.
    let (st, bad) = mon
        .get(s.url(&format!("ResearchStudy/{S1}/$sdv?_count=x")))
        .await;
    assert_eq!(st, 400);
    assert_eq!(bad["issue"][0]["expression"][0], "_count", "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_is_verified_once_however_often_verify_is_called() {
    let (s, _site) = store_with_subject().await;
    let mon = who(Role::Monitor, &[S1]);
    let url = s.url("Observation/mc-01-001-bmi/$verify");
    let (a, b, c, d) = tokio::join!(
        mon.post(url.clone(), json!({"resourceType": "Parameters"})),
        mon.post(url.clone(), json!({"resourceType": "Parameters"})),
        mon.post(url.clone(), json!({"resourceType": "Parameters"})),
        mon.post(url.clone(), json!({"resourceType": "Parameters"})),
    );
    let answers = [a, b, c, d];
    let created = answers.iter().filter(|(st, _)| *st == 201).count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(answers.iter().all(|(st, _)| *st == 200 || *st == 201));
    let ids: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|(_, p)| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "every call answers with the one verification: {ids:?}"
    );
    let (_, bundle) = mon
        .get(s.url("Provenance?target=Observation/mc-01-001-bmi"))
        .await;
    let verifications = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["resource"]["agent"][0]["type"]["coding"][0]["code"] == "verifier")
        .count();
    assert_eq!(verifications, 1, "{bundle}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_is_raised_answered_with_a_correction_and_closed_each_step_audited() {
    let (s, site) = store_with_subject().await;
    let mon = who(Role::Monitor, &[S1]);
    let (st, task) = mon
        .post(
            s.url("Observation/mc-01-001-bmi/$raise-query"),
            text("BMI 31.2 differs from the weight in the source (92 kg, 1.78 m)"),
        )
        .await;
    assert_eq!(st, 201, "{task}");
    assert_eq!(task["status"], "requested");
    assert_eq!(
        task["focus"]["reference"],
        "Observation/mc-01-001-bmi/_history/1"
    );
    assert_eq!(task["owner"]["identifier"]["value"], S1);
    let tid = task["id"].as_str().unwrap().to_string();

    // Nobody edits or closes a query around the operations; a site does not close it.
    let mut forged = task.clone();
    forged["status"] = json!("completed");
    assert_eq!(site.put(&s, forged.clone()).await.0, 403);
    let mut untagged = forged.clone();
    untagged.as_object_mut().unwrap().remove("code");
    assert_eq!(
        site.put(&s, untagged).await.0,
        403,
        "a query cannot be edited into a plain Task"
    );
    assert_eq!(
        site.post(s.url(&format!("Task/{tid}/$close")), text("done"))
            .await
            .0,
        403
    );
    assert_eq!(
        site.send(reqwest::Method::DELETE, s.url(&format!("Task/{tid}")), None)
            .await
            .0,
        403
    );
    // A monitor does not answer; another site does not see the query.
    assert_eq!(
        mon.post(s.url(&format!("Task/{tid}/$answer")), text("x"))
            .await
            .0,
        403
    );
    let site2 = who(Role::Site, &[S2]);
    assert_eq!(
        site2
            .post(s.url(&format!("Task/{tid}/$answer")), text("x"))
            .await
            .0,
        404
    );

    // The worklist and the subject report show the open query on the value.
    let (_, sdv) = mon.get(s.url("ResearchSubject/mc-01-001/$sdv")).await;
    let bmi = sdv["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["resource"]
                .as_str()
                .unwrap()
                .starts_with("Observation/mc-01-001-bmi/")
        })
        .unwrap()
        .clone();
    assert_eq!(bmi["openQueries"], 1, "{bmi}");
    assert_eq!(bmi["queries"][0]["state"], "open");
    assert_eq!(sdv["openQueries"], 1);

    // The site corrects the value (with its reason), then answers.
    let mut corrected = example("Observation-mc-01-001-bmi.json");
    corrected["valueQuantity"]["value"] = json!(29.0);
    let (st, b) = site.put(&s, corrected).await;
    assert_eq!(st, 200, "{b}");
    let (st, answered) = site
        .post(
            s.url(&format!("Task/{tid}/$answer")),
            text("Height was entered as 1.72 m; corrected to 1.78 m"),
        )
        .await;
    assert_eq!(st, 200, "{answered}");
    assert_eq!(answered["status"], "in-progress");
    assert_eq!(answered["businessStatus"]["text"], "answered");
    let outputs = answered["output"].as_array().unwrap();
    assert!(
        outputs
            .iter()
            .any(|o| o["valueReference"]["reference"] == "Observation/mc-01-001-bmi/_history/2"),
        "{answered}"
    );
    // An answered query is not answered again.
    let (st, again) = site
        .post(s.url(&format!("Task/{tid}/$answer")), text("again"))
        .await;
    assert_eq!(st, 422, "{again}");
    assert_eq!(again["issue"][0]["expression"][0], "Task.status");

    let (st, closed) = mon
        .post(s.url(&format!("Task/{tid}/$close")), text("accepted"))
        .await;
    assert_eq!(st, 200, "{closed}");
    assert_eq!(closed["status"], "completed");
    assert_eq!(
        closed["note"].as_array().unwrap().len(),
        3,
        "raised, answered, closed: {closed}"
    );

    // Every step is in the audit trail, as the act of the one who took it.
    let (_, trail) = mon
        .get(s.url(&format!("AuditEvent?entity=Task/{tid}")))
        .await;
    let steps = trail["entry"].as_array().map_or(0, Vec::len);
    assert_eq!(steps, 3, "{trail}");
    let (_, sdv) = mon.get(s.url("ResearchSubject/mc-01-001/$sdv")).await;
    assert_eq!(sdv["openQueries"], 0, "{sdv}");
}

#[tokio::test]
async fn a_browser_preflight_is_answered_without_a_token_and_answers_carry_no_cache() {
    let s = TestStore::start().await;
    let r = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            s.url("ResearchSubject/mc-01-001/$sdv"),
        )
        .header("origin", "https://monitoring.sponsor.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let r = client_with(&token(Role::Monitor, &[S1], ""))
        .get(s.url("ResearchSubject?_count=1"))
        .header("origin", "https://monitoring.sponsor.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase()
        .contains("etag"));
}
