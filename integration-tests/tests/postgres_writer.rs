//! The PostgreSQL writer's batches: the rows of a batch's jobs go in together, and when
//! PostgreSQL refuses them, the job whose rows it refuses fails, so do the jobs after it in its
//! batch (their change sequence numbers and audit chain follow from it), and every job before it
//! is kept: nothing acknowledged is missing, nothing refused is stored, the change sequence and
//! the audit chain have no gap. Needs TRIALBRIDGE_TEST_POSTGRES_URL (`scripts/test.sh` starts a
//! server).

use std::sync::Arc;

use trialbridge_storage::{
    AccessContext, AuditRecord, Index, IndexEntry, NewVersion, ResourceStore, StorageError,
};

fn server_url() -> String {
    std::env::var("TRIALBRIDGE_TEST_POSTGRES_URL").expect(
        "TRIALBRIDGE_TEST_POSTGRES_URL names no PostgreSQL: run the tests with `bash scripts/test.sh`",
    )
}

/// Writes Patient `id` with one index row whose value is `name`, audited.
async fn write_patient(
    store: Arc<dyn ResourceStore>,
    id: String,
    name: &'static str,
) -> Result<(), StorageError> {
    let ctx = AccessContext::system("postgres writer test");
    trialbridge_storage::write(&*store, &ctx, move |txn| {
        Box::pin(async move {
            let index = Index {
                text: vec![IndexEntry {
                    param: "name",
                    value: name.into(),
                    system: None,
                }],
                ranges: Vec::new(),
            };
            let body = |v: i64, at: &str| {
                format!(r#"{{"resourceType":"Patient","id":"{id}","meta":{{"versionId":"{v}","lastUpdated":"{at}"}}}}"#)
            };
            txn.append(NewVersion {
                resource_type: "Patient",
                id: &id,
                deleted: false,
                index: &index,
                body: &body,
                site: None,
            })
            .await?;
            txn.audit(AuditRecord {
                recorded_us: 1,
                site: None,
                entities: vec![format!("Patient/{id}")],
                body: format!(r#"{{"wrote":"{id}"}}"#),
            })
            .await?;
            Ok(())
        })
    })
    .await
}

#[tokio::test]
async fn rows_postgres_refuses_fail_their_job_and_the_later_ones_of_its_batch_only() {
    let url = integration_tests::postgres_database(&server_url(), "tb_writer_refusal").await;
    let mut admin = integration_tests::pg(&url).await;
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .execute(&mut admin)
        .await
        .unwrap();
    let store = trialbridge_storage::open(&url).await.unwrap();
    // A refusal PostgreSQL itself makes: no index value may be "poison".
    sqlx::raw_sql("ALTER TABLE search_index ADD CONSTRAINT no_poison CHECK (value <> 'poison')")
        .execute(&mut admin)
        .await
        .unwrap();
    write_patient(store.clone(), "before".into(), "fine")
        .await
        .unwrap();

    // A job that holds the writer until released, so that the twelve behind it queue up and
    // are taken as one batch, in order.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let ctx = AccessContext::system("postgres writer test");
    let blocker = {
        let store = store.clone();
        tokio::spawn(async move {
            trialbridge_storage::write(&*store, &ctx, move |_txn| {
                Box::pin(async move {
                    let _ = released.await;
                    Ok::<(), StorageError>(())
                })
            })
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut jobs = Vec::new();
    for i in 0..12 {
        let name = if i == 6 { "poison" } else { "fine" };
        jobs.push(tokio::spawn(write_patient(
            store.clone(),
            format!("p{i}"),
            name,
        )));
        // Queued in this order.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    let mut results = Vec::new();
    for j in jobs {
        results.push(j.await.unwrap());
    }
    for (i, r) in results.iter().enumerate() {
        if i < 6 {
            assert!(r.is_ok(), "p{i}, before the refused job, is kept: {r:?}");
        } else {
            assert!(
                matches!(r, Err(StorageError::CommitFailed(_))),
                "p{i}, the refused job or one after it, fails: {r:?}"
            );
        }
    }
    let ctx = AccessContext::system("postgres writer test");
    for i in 0..12 {
        let stored = store.read(&ctx, "Patient", &format!("p{i}")).await.unwrap();
        assert_eq!(
            stored.is_some(),
            i < 6,
            "p{i} stored exactly when acknowledged"
        );
    }
    // The writer goes on; the change sequence and the audit chain have no gap or fork.
    write_patient(store.clone(), "after".into(), "fine")
        .await
        .unwrap();
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM resource_version ORDER BY seq")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert_eq!(seqs, (1..=8).collect::<Vec<i64>>(), "before, p0..p5, after");
    let chain: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, prev_hash, hash FROM audit_event ORDER BY seq")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(chain.len(), 8);
    for (k, w) in chain.windows(2).enumerate() {
        assert_eq!(
            w[1].0,
            w[0].0 + 1,
            "audit positions follow each other at {k}"
        );
        assert_eq!(
            w[1].1, w[0].2,
            "each audit row links to the one before at {k}"
        );
    }
}
