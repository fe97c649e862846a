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
        views_dir: None,
    };
    let stats = warehouse_sync::run(&config, std::future::pending(), |st| metrics.record(st))
        .await
        .unwrap();
    assert_eq!(stats.events, 5);
    let pg = warehouse_sync::connect(&url).await.unwrap();
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

/// Waits until `query` (one bigint) gives `want` on the warehouse.
async fn wait_for(url: &str, query: &str, want: i64) {
    let mut last = None;
    for _ in 0..200 {
        let mut c = pg(url).await;
        last = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&mut c)
            .await
            .ok();
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{query}: {last:?}, expected {want}");
}

/// Three views a warehouse team writes (one row per component with `forEach`, final results
/// only with `where`, codes and component codes in one table with `unionAll`), added to the
/// views directory while the sync follows: each table is made and back-filled, then kept
/// current as new versions arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_added_while_the_sync_runs_are_back_filled_and_kept_current() {
    let s = TestStore::start().await;
    integration_tests::put_patients(&s, "v", 1).await;
    let observation = |id: &str, status: &str, components: &[(&str, f64)]| {
        let component: Vec<_> = components
            .iter()
            .map(|(code, v)| json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                                    "valueQuantity": {"value": v, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}))
            .collect();
        let mut o = json!({"resourceType": "Observation", "id": id, "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}], "text": "panel"},
            "subject": {"reference": "Patient/v0"}, "effectiveDateTime": "2026-03-02"});
        if !component.is_empty() {
            o["component"] = json!(component);
        }
        o
    };
    let put = |o: serde_json::Value| {
        let url = s.url(&format!("Observation/{}", o["id"].as_str().unwrap()));
        async move {
            let r = integration_tests::put_fhir(url, o.to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    };
    put(observation(
        "o1",
        "final",
        &[("8480-6", 120.0), ("8462-4", 80.0)],
    ))
    .await;
    put(observation("o2", "preliminary", &[("8480-6", 130.0)])).await;
    put(observation("o3", "final", &[])).await;

    let url = database(&format!("wh_views_{}", std::process::id())).await;
    let dir = tempfile::tempdir().unwrap();
    let config = warehouse_sync::SyncConfig {
        feed_url: s.feed.clone(),
        token: token(Role::Warehouse, &[], ""),
        postgres_url: url.clone(),
        follow: true,
        views_dir: Some(dir.path().to_path_buf()),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sync = tokio::spawn(async move {
        warehouse_sync::run(
            &config,
            async {
                let _ = stopped.await;
            },
            |_| {},
        )
        .await
    });
    wait_for(
        &url,
        "SELECT count(*) FROM fhir_resource WHERE resource_type = 'Observation'",
        3,
    )
    .await;

    let views = [
        json!({"resourceType": "ViewDefinition", "name": "bp_component", "resource": "Observation", "status": "active", "select": [
            {"column": [{"name": "id", "path": "getResourceKey()"}]},
            {"forEach": "component", "column": [
                {"name": "code", "path": "code.coding.first().code", "type": "code"},
                {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"}]}]}),
        json!({"resourceType": "ViewDefinition", "name": "final_result", "resource": "Observation", "status": "active",
            "where": [{"path": "status = 'final'"}],
            "select": [{"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "patient", "path": "subject.getReferenceKey(Patient)"}]}]}),
        json!({"resourceType": "ViewDefinition", "name": "every_code", "resource": "Observation", "status": "active", "select": [
            {"column": [{"name": "id", "path": "getResourceKey()"}]},
            {"unionAll": [
                {"forEach": "code.coding", "column": [{"name": "kind", "path": "'result'"}, {"name": "code", "path": "code"}]},
                {"forEach": "component.code.coding", "column": [{"name": "kind", "path": "'component'"}, {"name": "code", "path": "code"}]}]}]}),
    ];
    for v in &views {
        std::fs::write(
            dir.path()
                .join(format!("{}.json", v["name"].as_str().unwrap())),
            v.to_string(),
        )
        .unwrap();
    }
    // Back-filled from what the warehouse already holds.
    wait_for(&url, "SELECT count(*) FROM view_bp_component", 3).await;
    wait_for(&url, "SELECT count(*) FROM view_final_result", 2).await;
    wait_for(&url, "SELECT count(*) FROM view_every_code", 6).await;
    let mut c = pg(&url).await;
    let v: f64 = sqlx::query_scalar("SELECT value::float8 FROM view_bp_component WHERE id = 'Observation/o1' AND code = '8462-4'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 80.0);
    let p: String =
        sqlx::query_scalar("SELECT patient FROM view_final_result WHERE id = 'Observation/o3'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(p, "Patient/v0");

    // Kept current: o2 becomes final with a second component, o1 is deleted.
    put(observation(
        "o2",
        "final",
        &[("8480-6", 131.0), ("8462-4", 85.0)],
    ))
    .await;
    let r = integration_tests::client()
        .delete(s.url("Observation/o1"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_for(&url, "SELECT count(*) FROM view_final_result", 2).await;
    wait_for(
        &url,
        "SELECT count(*) FROM view_final_result WHERE id = 'Observation/o2'",
        1,
    )
    .await;
    wait_for(&url, "SELECT count(*) FROM view_bp_component", 2).await;
    wait_for(
        &url,
        "SELECT count(*) FROM view_bp_component WHERE value = 131",
        1,
    )
    .await;
    wait_for(&url, "SELECT count(*) FROM view_every_code", 4).await;

    // A view that is not valid is left out with its error; the others keep working.
    std::fs::write(
        dir.path().join("broken.json"),
        r#"{"name": "broken", "resource": "Observation", "select": [{"forEach": 1}]}"#,
    )
    .unwrap();
    put(observation("o4", "final", &[])).await;
    wait_for(&url, "SELECT count(*) FROM view_final_result", 3).await;
    wait_for(
        &url,
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'view_broken'",
        0,
    )
    .await;

    let _ = stop.send(());
    sync.await.unwrap().unwrap();
}
