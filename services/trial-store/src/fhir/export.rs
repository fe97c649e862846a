//! Bulk Data export (FHIR Bulk Data Access IG v2): `GET [base]/$export` and
//! `GET [base]/Patient/$export` with `Prefer: respond-async`; the job reads one consistent
//! snapshot (the change sequence at kick-off), streams NDJSON files to disk page by page
//! (never the whole data in memory), and keeps its state in the trial database (`job`), so a
//! job that was running when the server stopped is run again at start-up. `$export-status/{job}` gives
//! 202 with `X-Progress` until the manifest; DELETE cancels; the files are served from
//! `$export-file/{job}/{Type}.ndjson`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use trialbridge_auth::Interaction;
use trialbridge_fhir::IssueType;
use trialbridge_storage::{AccessContext, Role};

use crate::error::{forbidden, Status, StoreError};
use crate::fhir::{query_pairs, StoreState};
use crate::security::Caller;

/// Running jobs' cancel flags.
#[derive(Default)]
pub struct Exports {
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

/// A job's state, as kept in the database.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Job {
    id: String,
    /// queued | running | done | failed | cancelled
    status: String,
    request: String,
    types: Vec<String>,
    since_us: Option<i64>,
    /// For a Group export: the `Patient/id` references of its members.
    #[serde(default)]
    patients: Option<Vec<String>>,
    as_of: i64,
    transaction_time: String,
    written: u64,
    outputs: Vec<(String, u64)>,
    error: Option<String>,
    /// The token subject that started the job: only they (or the system) poll, download and
    /// cancel it.
    #[serde(default)]
    owner: Option<String>,
}

/// The job, if it exists and the caller owns it.
async fn owned(s: &StoreState, caller: &Caller, id: &str) -> Result<Job, StoreError> {
    let not_found = || {
        StoreError::new(
            Status::NotFound,
            IssueType::NotFound,
            format!("no export job {id}"),
        )
    };
    checked_job(id)?;
    let job = load(s, id).await?.ok_or_else(not_found)?;
    match (&job.owner, &caller.principal) {
        (_, None) => Ok(job),
        (Some(o), Some(p)) if *o == p.subject => Ok(job),
        _ if caller.role() == Role::System => Ok(job),
        _ => Err(not_found()),
    }
}

const EXPORT_ACTOR: &str = "trialbridge $export";

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::new(Status::BadRequest, IssueType::Invalid, msg)
}

fn job_dir(s: &StoreState, id: &str) -> PathBuf {
    s.config.export_dir.join(id)
}

/// Saves a job's state in the trial database (committed before this returns).
async fn save(s: &StoreState, job: &Job) -> Result<(), trialbridge_storage::StorageError> {
    let state = serde_json::to_string(job).unwrap_or_default();
    trialbridge_storage::put_job(&*s.store, &job.id, Some(state)).await
}

/// A job's state, if the database knows it.
async fn load(s: &StoreState, id: &str) -> Result<Option<Job>, StoreError> {
    Ok(s.store
        .job(id)
        .await?
        .and_then(|state| serde_json::from_str(&state).ok()))
}

/// Kick-off: `GET [base]/$export`, `GET [base]/Patient/$export` and `GET
/// [base]/Group/{id}/$export` (with `Prefer: respond-async`, which `respond_async` says was
/// sent): the URL to poll for the job's status.
pub async fn kick_off(
    s: &StoreState,
    caller: &Caller,
    respond_async: bool,
    query: Option<&str>,
    patient_level: bool,
    group: Option<&str>,
) -> Result<String, StoreError> {
    caller.require_role(&[Role::Warehouse, Role::System], "run a bulk export")?;
    let patients = match group {
        None => None,
        Some(gid) => {
            let ctx = &caller.ctx;
            let g = s
                .store
                .read(ctx, "Group", gid)
                .await?
                .filter(|v| !v.deleted)
                .ok_or_else(|| {
                    StoreError::new(
                        Status::NotFound,
                        IssueType::NotFound,
                        format!("Group/{gid} does not exist"),
                    )
                })?;
            let v: Value =
                serde_json::from_str(g.body.as_deref().unwrap_or("{}")).unwrap_or_default();
            let members: Vec<String> = v["member"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["entity"]["reference"].as_str())
                .filter_map(trialbridge_fhir::reference::literal_target)
                .filter(|(t, _)| *t == "Patient")
                .map(|(t, id)| format!("{t}/{id}"))
                .collect();
            Some(members)
        }
    };
    if !respond_async {
        return Err(bad("$export runs asynchronously: send Prefer: respond-async").at("Prefer"));
    }
    let pairs = query_pairs(query);
    let mut types: Vec<String> = if patient_level {
        let mut t: Vec<String> = trialbridge_fhir::generated::compartments::PATIENT_COMPARTMENT
            .iter()
            .map(|(t, _)| t.to_string())
            .collect();
        t.push("Patient".into());
        t.sort();
        t.dedup();
        t
    } else {
        trialbridge_fhir::resource_type::all()
            .iter()
            .map(|t| t.to_string())
            .collect()
    };
    let mut since_us = None;
    for (k, v) in &pairs {
        match k.as_str() {
            "_type" => {
                let wanted: Vec<String> = v
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect();
                for t in &wanted {
                    if !types.contains(t) {
                        return Err(bad(format!(
                            "_type {t} is not a resource type this export can contain"
                        ))
                        .at("_type"));
                    }
                }
                for t in &wanted {
                    caller.require(t, Interaction::Search)?;
                }
                types = wanted;
            }
            "_since" => {
                let t = trialbridge_fhir::instant::parse(v)
                    .ok_or_else(|| bad(format!("_since '{v}' is not an instant")).at("_since"))?;
                since_us = Some((t.unix_timestamp_nanos() / 1000) as i64);
            }
            "_outputFormat" => {
                if !matches!(
                    v.as_str(),
                    "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                ) {
                    return Err(bad(format!(
                        "_outputFormat {v} is not supported (application/fhir+ndjson)"
                    ))
                    .at("_outputFormat"));
                }
            }
            other => {
                return Err(bad(format!(
                    "$export has no parameter {other} here (_type, _since, _outputFormat)"
                ))
                .at(other.to_string()))
            }
        }
    }
    types.retain(|t| caller.permits(t, Interaction::Search));
    if types.is_empty() {
        return Err(forbidden(
            "the granted scopes allow none of the types this export would contain".into(),
        ));
    }
    let as_of = s.store.last_seq(&caller.ctx).await?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let level = match group {
        Some(g) => format!("Group/{g}/"),
        None if patient_level => "Patient/".to_string(),
        None => String::new(),
    };
    let request = format!(
        "{}/{level}$export{}",
        s.config.base_url,
        query.map(|q| format!("?{q}")).unwrap_or_default()
    );
    let job = Job {
        id: id.clone(),
        status: "queued".into(),
        request,
        types,
        since_us,
        patients,
        as_of,
        transaction_time: trialbridge_fhir::instant::format(time::OffsetDateTime::now_utc()),
        written: 0,
        outputs: Vec::new(),
        error: None,
        owner: caller.principal.as_ref().map(|p| p.subject.clone()),
    };
    save(s, &job).await?;
    start(s.clone(), job);
    Ok(format!("{}/$export-status/{id}", s.config.base_url))
}

fn start(s: StoreState, job: Job) {
    let cancel = Arc::new(AtomicBool::new(false));
    s.exports
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(job.id.clone(), cancel.clone());
    tokio::spawn(async move {
        let id = job.id.clone();
        let dir = job_dir(&s, &id);
        let result = run(&s, job.clone(), &dir, &cancel).await;
        s.exports
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if cancel.load(Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = trialbridge_storage::put_job(&*s.store, &id, None).await;
            return;
        }
        if let Err(e) = result {
            let mut failed = load(&s, &id).await.ok().flatten().unwrap_or(job);
            failed.status = "failed".into();
            failed.error = Some(e);
            let _ = save(&s, &failed).await;
        }
    });
}

async fn run(s: &StoreState, mut job: Job, dir: &Path, cancel: &AtomicBool) -> Result<(), String> {
    job.status = "running".into();
    job.written = 0;
    job.outputs.clear();
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| e.to_string())?;
    save(s, &job).await.map_err(|e| e.to_string())?;
    let ctx = AccessContext::system(EXPORT_ACTOR);
    for t in job.types.clone() {
        let path = dir.join(format!("{t}.ndjson"));
        // The file is created with its first resource: types without any cost no I/O.
        let mut file: Option<tokio::io::BufWriter<tokio::fs::File>> = None;
        let mut count = 0u64;
        let mut after: Option<String> = None;
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Ok(());
            }
            let page = s
                .store
                .snapshot_page(&ctx, &t, job.as_of, after.clone(), 1000)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let members = match &job.patients {
                None => None,
                Some(p) => Some(
                    group_members(s, &t, &page, p)
                        .await
                        .map_err(|e| format!("{e:?}"))?,
                ),
            };
            for v in &page {
                if job.since_us.is_some_and(|since| v.last_updated_us <= since) {
                    continue;
                }
                if members.as_ref().is_some_and(|m| !m.contains(&v.id)) {
                    continue;
                }
                if let Some(body) = &v.body {
                    if file.is_none() {
                        file = Some(tokio::io::BufWriter::with_capacity(
                            256 * 1024,
                            tokio::fs::File::create(&path)
                                .await
                                .map_err(|e| e.to_string())?,
                        ));
                    }
                    let f = file.as_mut().expect("created above");
                    f.write_all(body.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    f.write_all(b"\n").await.map_err(|e| e.to_string())?;
                    count += 1;
                }
            }
            job.written += page.len() as u64;
        }
        if let Some(mut f) = file {
            f.flush().await.map_err(|e| e.to_string())?;
            f.get_ref().sync_all().await.map_err(|e| e.to_string())?;
            job.outputs.push((t.clone(), count));
            save(s, &job).await.map_err(|e| e.to_string())?;
        }
    }
    job.status = "done".into();
    save(s, &job).await.map_err(|e| e.to_string())
}

/// The ids of `page` that belong to the compartment of one of `patients` (a Group export):
/// the Patients themselves, or resources whose Patient-compartment parameters point at one.
async fn group_members(
    s: &StoreState,
    resource_type: &str,
    page: &[trialbridge_storage::StoredVersion],
    patients: &[String],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut out = std::collections::HashSet::new();
    if resource_type == "Patient" {
        for v in page {
            if patients.contains(&format!("Patient/{}", v.id)) {
                out.insert(v.id.clone());
            }
        }
        return Ok(out);
    }
    let params = trialbridge_fhir::generated::compartments::PATIENT_COMPARTMENT
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map(|(_, p)| *p)
        .unwrap_or(&[]);
    let ids: Vec<String> = page.iter().map(|v| v.id.clone()).collect();
    let ctx = AccessContext::system(EXPORT_ACTOR);
    for p in params {
        for (id, value) in s.store.index_values(&ctx, resource_type, p, &ids).await? {
            if patients.contains(&value) {
                out.insert(id);
            }
        }
    }
    Ok(out)
}

/// Runs again every job that was queued or running when the server stopped.
pub async fn resume(s: &StoreState) {
    let jobs = match s.store.jobs().await {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the export jobs");
            return;
        }
    };
    for (_, state) in jobs {
        if let Ok(job) = serde_json::from_str::<Job>(&state) {
            if matches!(job.status.as_str(), "queued" | "running") {
                tracing::info!(job = %job.id, "resuming an export job");
                start(s.clone(), job);
            }
        }
    }
}

fn checked_job(id: &str) -> Result<(), StoreError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(StoreError::new(
            Status::NotFound,
            IssueType::NotFound,
            format!("no export job {id}"),
        ))
    }
}

/// Where a job stands.
pub enum JobState {
    /// Still running: how far it got.
    Running {
        /// `N resources read`.
        progress: String,
    },
    /// Done: the Bulk Data manifest.
    Done(Value),
}

/// `GET [base]/$export-status/{job}`: the job's state; a failed job is an error.
pub async fn status(s: &StoreState, caller: &Caller, id: &str) -> Result<JobState, StoreError> {
    let job = owned(s, caller, id).await?;
    match job.status.as_str() {
        "queued" | "running" => Ok(JobState::Running {
            progress: format!("{} resources read", job.written),
        }),
        "done" => {
            let output: Vec<Value> = job
                .outputs
                .iter()
                .map(|(t, n)| json!({"type": t, "url": format!("{}/$export-file/{id}/{t}.ndjson", s.config.base_url), "count": n}))
                .collect();
            Ok(JobState::Done(
                json!({"transactionTime": job.transaction_time, "request": job.request, "requiresAccessToken": true, "output": output, "error": []}),
            ))
        }
        _ => Err(StoreError::new(
            Status::InternalError,
            IssueType::Exception,
            format!("export job {id} failed: {}", job.error.unwrap_or_default()),
        )),
    }
}

/// `DELETE [base]/$export-status/{job}`: cancels a job and removes its files.
pub async fn cancel(s: &StoreState, caller: &Caller, id: &str) -> Result<(), StoreError> {
    owned(s, caller, id).await?;
    let dir = job_dir(s, id);
    let running = s
        .exports
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .cloned();
    match running {
        Some(flag) => flag.store(true, Ordering::SeqCst),
        None => {
            let _ = std::fs::remove_dir_all(&dir);
            trialbridge_storage::put_job(&*s.store, id, None).await?;
        }
    }
    Ok(())
}

/// `GET [base]/$export-file/{job}/{Type}.ndjson`: the file, opened.
pub async fn file(
    s: &StoreState,
    caller: &Caller,
    id: &str,
    name: &str,
) -> Result<tokio::fs::File, StoreError> {
    owned(s, caller, id).await?;
    let t = name.strip_suffix(".ndjson").unwrap_or("");
    if trialbridge_fhir::resource_type::canonical(t).is_none() {
        return Err(StoreError::new(
            Status::NotFound,
            IssueType::NotFound,
            format!("no export file {name}"),
        ));
    }
    tokio::fs::File::open(job_dir(s, id).join(name))
        .await
        .map_err(|_| {
            StoreError::new(
                Status::NotFound,
                IssueType::NotFound,
                format!("no export file {name} in job {id}"),
            )
        })
}
