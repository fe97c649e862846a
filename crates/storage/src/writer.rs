//! What both backends' writers share: gathering queued jobs into one batch, settling each
//! job's outcome (keep, roll back, refuse an unaudited change), and the queue of audit events
//! of requests that changed nothing, which rides along with the next commit.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{JobFinish, JobOutcome, StorageError, WriteJob};

/// How many queued write jobs one commit may take at most.
pub(crate) const MAX_BATCH: usize = 512;

/// Queued audit events beyond which each new one waits for the writer.
const MAX_PENDING_AUDIT: usize = 50_000;

/// How long audit events of requests that changed nothing wait for a commit at most.
const AUDIT_FLUSH_DELAY: Duration = Duration::from_millis(100);

/// Adds to `batch` every job queued behind `first`, up to [`MAX_BATCH`].
pub(crate) fn gather(
    first: WriteJob,
    rx: &mut mpsc::Receiver<WriteJob>,
    batch: &mut Vec<WriteJob>,
) {
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
}

/// What the writer does with a job that has run.
pub(crate) enum Settlement {
    /// Release its savepoint; call `finish` with the commit's result.
    Keep(JobFinish),
    /// Roll its savepoint back; then call `finish` with the commit's result (a job that
    /// failed reports its own error through it).
    Discard(JobFinish),
    /// Roll its savepoint back and call `finish` with this error now.
    Refuse(JobFinish, StorageError),
    /// Roll its savepoint back; the job panicked, its caller learns it from the dropped
    /// channel.
    Panicked,
}

/// Settles a job's outcome; `appended` and `audited` count what it wrote.
pub(crate) fn settle(
    outcome: std::thread::Result<JobOutcome>,
    appended: usize,
    audited: usize,
) -> Settlement {
    match outcome {
        Ok(JobOutcome { keep: true, finish }) if appended > 0 && audited == 0 => {
            tracing::error!("a write job changed data without an audit event; rolled back");
            Settlement::Refuse(finish, StorageError::Unaudited)
        }
        Ok(JobOutcome { keep: true, finish }) => Settlement::Keep(finish),
        Ok(JobOutcome {
            keep: false,
            finish,
        }) => Settlement::Discard(finish),
        Err(_) => {
            tracing::error!("a write job panicked; its changes were rolled back");
            Settlement::Panicked
        }
    }
}

/// Reports a batch's commit result to the jobs it kept.
pub(crate) fn report(finishers: Vec<JobFinish>, result: &Result<(), StorageError>) {
    let msg = result.as_ref().err().map(ToString::to_string);
    for f in finishers {
        f(match &msg {
            None => Ok(()),
            Some(m) => Err(StorageError::CommitFailed(m.clone())),
        });
    }
}

/// Audit events of requests that changed nothing, waiting for the next commit of the writer.
#[derive(Default)]
pub(crate) struct PendingAudit(std::sync::Mutex<Vec<crate::AuditRecord>>);

impl PendingAudit {
    /// Queues one event; returns how many wait now.
    pub(crate) fn push(&self, record: crate::AuditRecord) -> usize {
        let mut p = self.0.lock().unwrap_or_else(|p| p.into_inner());
        p.push(record);
        p.len()
    }

    /// Takes everything queued as the rows to append: one batch row (a JSON array of the
    /// queued bodies) per site.
    pub(crate) fn take_rows(&self) -> Vec<crate::AuditRecord> {
        let records = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_site: Vec<(Option<String>, Vec<crate::AuditRecord>)> = Vec::new();
        for r in records {
            match by_site.iter_mut().find(|(s, _)| *s == r.site) {
                Some((_, v)) => v.push(r),
                None => by_site.push((r.site.clone(), vec![r])),
            }
        }
        by_site
            .into_iter()
            .map(|(site, group)| {
                let mut body = String::with_capacity(
                    group.iter().map(|r| r.body.len() + 1).sum::<usize>() + 2,
                );
                body.push('[');
                let mut entities = Vec::new();
                for (i, r) in group.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&r.body);
                    entities.extend(r.entities.iter().cloned());
                }
                body.push(']');
                entities.sort();
                entities.dedup();
                crate::AuditRecord {
                    recorded_us: group[0].recorded_us,
                    site,
                    entities,
                    body,
                }
            })
            .collect()
    }
}

impl PendingAudit {
    /// Queues an audit event and makes sure a commit writes it: an empty job makes the writer
    /// commit, and every commit writes the queue. The first event queued sends one after
    /// AUDIT_FLUSH_DELAY (unless a write commits first), so that a stream of reads costs a
    /// few commits a second rather than one per read; a long queue waits for room in the
    /// writer's channel, which slows its producers.
    pub(crate) async fn queue(
        &self,
        record: crate::AuditRecord,
        jobs: &mpsc::Sender<WriteJob>,
    ) -> Result<(), StorageError> {
        let queued = self.push(record);
        let nudge = || -> WriteJob {
            Box::new(|_| {
                Box::pin(async {
                    JobOutcome {
                        keep: true,
                        finish: Box::new(|_| {}),
                    }
                })
            })
        };
        if queued >= MAX_PENDING_AUDIT {
            jobs.send(nudge())
                .await
                .map_err(|_| StorageError::WriterGone)?;
        } else if queued == 1 {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                tokio::time::sleep(AUDIT_FLUSH_DELAY).await;
                let _ = jobs.send(nudge()).await;
            });
        }
        Ok(())
    }
}
