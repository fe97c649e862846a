//! The SQLite store's WAL checkpoints, run beside the writer instead of inside its commits.
//!
//! SQLite checkpoints a WAL database automatically: the commit that takes the log past 1,000
//! pages copies the logged pages into the database file and fsyncs it before it returns, so
//! that commit's callers, and every job queued behind it, wait for the copy (a thread copying
//! every 500 ms beside it only shortened the wait).
//!
//! [`Checkpointer`] takes the automatic checkpoint off the writer's connection (its WAL hook
//! replaces SQLite's) and, once the writer has answered a commit's callers, wakes a thread that
//! checkpoints PASSIVE from a connection of its own: the copy of the logged pages and the
//! database file's fsync run beside the writer, which keeps committing meanwhile. The log starts
//! again from its beginning only when a transaction begins after a checkpoint has copied every
//! frame, which under continuous commits a checkpoint beside the writer never achieves (measured:
//! the log grew by every page written). So once the thread has copied the bulk, the writer, after
//! answering its next commit's callers, checkpoints the few frames committed since; its next
//! transaction starts the log again. Should the thread fall behind (a reader pinning old frames,
//! a stalled disk), the writer checkpoints everything itself past [`WRITER_CHECKPOINT_PAGES`].
//!
//! The site gateway keeps SQLite's automatic checkpoint: at 2,000 messages a second its ACK
//! latency was no better with this scheme (BENCHMARKS.md), its small commits' WAL fsyncs
//! competing with the thread's.
//!
//! Durability is unchanged: a commit is durable when its WAL frames are fsynced
//! (`synchronous=FULL`); a checkpoint only moves committed pages into the database file.

use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

/// The log size, in pages, at which the checkpoint thread is woken (SQLite's own threshold for
/// its automatic checkpoint).
const CHECKPOINT_PAGES: i32 = 1_000;

/// The log size, in pages, past which the writer checkpoints itself: the checkpoint thread has
/// fallen behind by 64 MB (4 kB pages).
const WRITER_CHECKPOINT_PAGES: i32 = 16_000;

/// How often the thread repeats a checkpoint that commits overtook before it waits again.
const CATCH_UP_ROUNDS: usize = 4;

/// Frames the thread leaves to the writer: a few commits' worth.
const FEW_FRAMES: i64 = 100;

thread_local! {
    /// The WAL's size in pages after the last commit on this thread. SQLite calls the WAL hook
    /// on the thread that commits, and each database has one writer thread.
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

/// The checkpoint thread of one database; owned by its writer thread. Dropping it stops the
/// thread.
pub(crate) struct Checkpointer {
    wake: SyncSender<()>,
    /// Set by the thread when its checkpoint has copied the log up to a few frames; taken by
    /// the writer, which then copies the rest.
    copied: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Takes the automatic checkpoint off `writer` (the connection every write of the database
    /// at `path` goes through) and starts the thread that checkpoints instead; `name` names the
    /// thread. The writer calls [`Checkpointer::after_commit`] after each commit.
    pub(crate) fn start(path: &Path, writer: &Connection, name: &str) -> std::io::Result<Self> {
        let conn = Connection::open(path).map_err(std::io::Error::other)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(std::io::Error::other)?;
        let (wake, woken) = sync_channel(1);
        let copied = Arc::new(AtomicBool::new(false));
        let done = copied.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || checkpoint_loop(&conn, &woken, &done))?;
        count_wal_pages(writer);
        Ok(Self { wake, copied })
    }

    /// Called on the writer's thread after a commit, once its waiters have their answer. Past
    /// [`CHECKPOINT_PAGES`] in the log it finishes the thread's checkpoint (the frames committed
    /// since) when the thread has copied the rest, wakes the thread otherwise, and checkpoints
    /// everything itself when the thread has fallen far behind or is gone.
    pub(crate) fn after_commit(&self, writer: &Connection) {
        let pages = WAL_PAGES.with(|p| p.replace(0));
        if pages < CHECKPOINT_PAGES {
            return;
        }
        // The thread is asked only when nothing else decides; a full channel means it is woken
        // and has not started yet.
        let finish = self.copied.swap(false, Ordering::AcqRel)
            || pages >= WRITER_CHECKPOINT_PAGES
            || matches!(self.wake.try_send(()), Err(TrySendError::Disconnected(())));
        if finish {
            if let Err(e) = checkpoint(writer) {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
    }
}

/// Replaces SQLite's own WAL hook on `writer`, the one that runs the automatic checkpoint, with
/// one that only notes the log's size.
fn count_wal_pages(writer: &Connection) {
    writer.wal_hook(Some(|_, pages| {
        WAL_PAGES.with(|p| p.set(pages));
        Ok(())
    }));
}

/// One PASSIVE checkpoint (it never waits for the writer or for readers): how many frames of
/// the log it left uncopied (committed while it ran, or pinned by a reader's snapshot).
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        let (log, copied): (i64, i64) = (r.get(1)?, r.get(2)?);
        Ok(log - copied)
    })
}

/// Checkpoints whenever woken: rounds until a round finds nothing left or few frames are left,
/// then tells the writer to copy the rest.
fn checkpoint_loop(conn: &Connection, woken: &Receiver<()>, copied: &AtomicBool) {
    while woken.recv().is_ok() {
        for _ in 0..CATCH_UP_ROUNDS {
            match checkpoint(conn) {
                Ok(left) if left <= FEW_FRAMES => {
                    copied.store(true, Ordering::Release);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", "FULL").unwrap();
        c.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
            .unwrap();
        c
    }

    fn write(c: &Connection, cp: &Checkpointer, rows: usize) {
        let body = vec![7u8; 3000];
        for _ in 0..rows {
            c.execute("INSERT INTO t (body) VALUES (?1)", [&body])
                .unwrap();
            cp.after_commit(c);
        }
    }

    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("w.db-wal")).map_or(0, |m| m.len())
    }

    #[test]
    fn the_log_starts_again_under_continuous_commits() {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d.path().join("w.db"));
        let cp = Checkpointer::start(&d.path().join("w.db"), &c, "test-checkpoint").unwrap();
        // 12,000 rows of 3 kB, one commit each, never pausing: a log of well over 16,000 pages
        // if it never started again. The thread
        // alone never catches up with such a writer, so without the writer's finishing step
        // the log grows until the writer's own checkpoint past 16,000 pages (measured: 66 MB);
        // with it the log starts again every thousand pages or so. The bound leaves room for a
        // thread starved of CPU for thousands of commits on a busy test machine.
        write(&c, &cp, 12_000);
        let wal = wal_bytes(d.path());
        assert!(wal < 32 * 1024 * 1024, "the WAL is {wal} bytes");
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 12_000);
    }

    /// A checkpointer whose thread never runs (`woken` kept, never read).
    fn stalled(writer: &Connection) -> (Checkpointer, Receiver<()>) {
        let (wake, woken) = sync_channel(1);
        count_wal_pages(writer);
        let copied = Arc::new(AtomicBool::new(false));
        (Checkpointer { wake, copied }, woken)
    }

    #[test]
    fn commits_do_not_checkpoint_until_the_thread_falls_far_behind() {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d.path().join("w.db"));
        let (cp, _woken) = stalled(&c);
        // 4,000 commits (more than 4,000 pages): SQLite's automatic checkpoint would have let
        // the log start again at least three times; the log holds every frame instead.
        write(&c, &cp, 4_000);
        let wal = wal_bytes(d.path());
        assert!(wal > 15 * 1024 * 1024, "the WAL is {wal} bytes");
        // Past 16,000 pages the writer checkpoints itself and the log starts again.
        write(&c, &cp, 16_000);
        let wal = wal_bytes(d.path());
        assert!(wal < 70 * 1024 * 1024, "the WAL is {wal} bytes");
    }

    #[test]
    fn the_writer_checkpoints_itself_when_the_thread_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d.path().join("w.db"));
        let (cp, woken) = stalled(&c);
        drop(woken);
        write(&c, &cp, 4_000);
        let wal = wal_bytes(d.path());
        assert!(wal < 8 * 1024 * 1024, "the WAL is {wal} bytes");
    }
}
