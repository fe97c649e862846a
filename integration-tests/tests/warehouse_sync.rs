//! warehouse-sync against a real PostgreSQL (TRIALBRIDGE_TEST_POSTGRES_URL; scripts/test.sh
//! starts one): `trialbridge sync` killed with SIGKILL at several points of a 100,000-change
//! catch-up,
//! restarted each time, ends with exactly the tables a single uninterrupted run writes.

use std::time::Duration;

use integration_tests::pg;
use integration_tests::{client, token, Role, TestStore};
use serde_json::json;

fn admin_url() -> String {
    std::env::var("TRIALBRIDGE_TEST_POSTGRES_URL").expect(
        "TRIALBRIDGE_TEST_POSTGRES_URL names no PostgreSQL: run the tests with `bash scripts/test.sh`",
    )
}

/// A fresh database on the test server; its URL.
async fn database(name: &str) -> String {
    let admin = admin_url();
    let mut c = pg(&admin).await;
    sql(&mut c, &format!("DROP DATABASE IF EXISTS {name}")).await;
    sql(&mut c, &format!("CREATE DATABASE {name}")).await;
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

/// Runs one statement.
async fn sql(c: &mut sqlx::PgConnection, statement: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(c)
        .await
        .unwrap();
}

/// Every row of the warehouse tables as text, in a fixed order.
async fn dump(url: &str) -> (Vec<String>, Vec<String>, i64) {
    let mut c = pg(url).await;
    let versions: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(v)::text FROM fhir_version v ORDER BY seq")
            .fetch_all(&mut c)
            .await
            .unwrap();
    let current: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(r)::text FROM fhir_resource r ORDER BY resource_type, id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let cursor: i64 = sqlx::query_scalar("SELECT seq FROM sync_cursor")
        .fetch_one(&mut c)
        .await
        .unwrap();
    (versions, current, cursor)
}

fn sync(feed: &str, url: &str, bearer: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"));
    c.args(["sync", "--from", feed, "--postgres", url])
        .env("TRIALBRIDGE_TOKEN", bearer)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_killed_and_restarted_equals_one_uninterrupted_run() {
    let s = TestStore::start().await;
    // Creates, updates and deletes, in transactions of 500 entries.
    let n = 100_000;
    for chunk in 0..n / 500 {
        let entries: Vec<_> = (0..500)
            .map(|k| {
                let i = chunk * 500 + k;
                let id = format!("w{}", i % 60_000);
                let entry = if i >= 90_000 {
                    json!({"request": {"method": "DELETE", "url": format!("Patient/{id}")}})
                } else {
                    json!({"resource": {"resourceType": "Patient", "id": id, "gender": if i < 60_000 { "female" } else { "male" }},
                           "request": {"method": "PUT", "url": format!("Patient/{id}")}})
                };
                entry
            })
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let r = client()
            .post(&s.base)
            .header("content-type", "application/fhir+json")
            .body(bundle.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let bearer = token(Role::Warehouse, &[], "");
    let killed = database(&format!("wh_killed_{}", std::process::id())).await;
    let fresh = database(&format!("wh_fresh_{}", std::process::id())).await;
    // Killed at several points (the delays are fixed so that a failure can be replayed).
    for delay_ms in [150, 60, 400, 90, 250, 30, 600, 120] {
        let mut child = sync(&s.feed, &killed, &bearer).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = child.start_kill(); // SIGKILL
        let _ = child.wait().await;
    }
    // The kills interrupted a catch-up under way: some batches were committed, not all.
    let partial = {
        let mut c = pg(&killed).await;
        sqlx::query_scalar::<_, i64>("SELECT seq FROM sync_cursor")
            .fetch_optional(&mut c)
            .await
            .unwrap()
            .unwrap_or(0)
    };
    let status = sync(&s.feed, &killed, &bearer).status().await.unwrap();
    assert!(status.success());
    let status = sync(&s.feed, &fresh, &bearer).status().await.unwrap();
    assert!(status.success());
    let (kv, kc, kcur) = dump(&killed).await;
    let (fv, fc, fcur) = dump(&fresh).await;
    assert_eq!(fv.len(), 100_000, "one row per committed version");
    assert_eq!(fc.len(), 60_000, "one row per resource");
    assert_eq!(kcur, fcur);
    assert!(
        partial > 0 && partial < fcur,
        "the kills came at {partial} of {fcur}"
    );
    assert!(kv == fv, "the versions differ after the kills");
    assert!(kc == fc, "the current rows differ after the kills");
    // Running again changes nothing.
    let status = sync(&s.feed, &killed, &bearer).status().await.unwrap();
    assert!(status.success());
    assert_eq!(dump(&killed).await.0.len(), 100_000);
}

fn example(name: &str) -> serde_json::Value {
    let path = integration_tests::repo_root()
        .join("studies/mesemcart/examples")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_study_views_fill_the_flat_tables() {
    let s = TestStore::start().await;
    let site = integration_tests::client_with(&token(Role::Site, &["mesemcart-site-01"], ""));
    let put = |v: serde_json::Value| {
        let url = s.url(&format!(
            "{}/{}",
            v["resourceType"].as_str().unwrap(),
            v["id"].as_str().unwrap()
        ));
        site.put(url)
            .header("content-type", "application/fhir+json")
            .header("x-reason-for-change", "status change")
            .body(v.to_string())
            .send()
    };
    for f in [
        "Patient-mc-01-001.json",
        "ResearchSubject-mc-01-001.json",
        "Observation-mc-01-001-bmi.json",
        "Observation-mc-01-001-icrs-grade.json",
    ] {
        assert!(put(example(f)).await.unwrap().status().is_success(), "{f}");
    }
    let mut rs = example("ResearchSubject-mc-01-001.json");
    rs["status"] = json!("on-study");
    assert!(put(rs).await.unwrap().status().is_success());
    for f in [
        "Procedure-mc-01-001-implantation.json",
        "Observation-mc-01-001-koos-pain-v5.json",
    ] {
        assert!(put(example(f)).await.unwrap().status().is_success(), "{f}");
    }
    let url = database(&format!("wh_views_{}", std::process::id())).await;
    let status = sync(&s.feed, &url, &token(Role::Warehouse, &[], ""))
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let mut c = pg(&url).await;
    let r: (String, String, String) =
        sqlx::query_as("SELECT status, site_study, patient FROM view_subject")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(r.0, "on-study", "the newest version");
    assert_eq!(r.1, "ResearchStudy/mesemcart-site-01");
    assert_eq!(r.2, "Patient/mc-01-001");
    let r: (String, String, String, String) = sqlx::query_as(
        "SELECT value::text, unit, time, site_study FROM view_observation WHERE id = 'Observation/mc-01-001-bmi'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(r.0, "27.4");
    assert_eq!(r.1, "kg/m2");
    assert_eq!(r.2, "2026-03-02");
    assert_eq!(r.3, "ResearchStudy/mesemcart-site-01");
    let r: (String, String, String) =
        sqlx::query_as("SELECT cell_batch, carrier_lot, performed FROM view_procedure")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(r.0, "MC-B-2026-014");
    assert_eq!(r.1, "COL-77812");
    assert_eq!(r.2, "2026-03-16");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM view_observation")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 3, "BMI, ICRS grade, KOOS pain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_progress_lag_and_rows() {
    let s = TestStore::start().await;
    integration_tests::put_patients(&s, "m", 5).await;
    let url = database(&format!("wh_metrics_{}", std::process::id())).await;
    let metrics = warehouse_sync::metrics::Metrics::default();
    let config = warehouse_sync::SyncConfig {
        feed_url: s.feed.clone(),
        token: token(Role::Warehouse, &[], ""),
        postgres_url: url.clone(),
        follow: false,
    };
    let stats = warehouse_sync::run(&config, std::future::pending(), |st| metrics.record(st))
        .await
        .unwrap();
    assert_eq!(stats.events, 5);
    let pg = warehouse_sync::connect(&url, &[]).await.unwrap();
    let text = warehouse_sync::metrics::render(&metrics, &pg)
        .await
        .unwrap();
    for line in [
        "warehouse_sync_events_total 5",
        "warehouse_sync_cursor 5",
        "warehouse_sync_table_rows{table=\"fhir_version\"} 5",
        "warehouse_sync_table_rows{table=\"fhir_resource\"} 5",
        "warehouse_sync_table_rows{table=\"view_observation\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    let lag: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("warehouse_sync_lag_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..60.0).contains(&lag), "{lag}");
}
