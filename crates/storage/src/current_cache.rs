//! The current versions a PostgreSQL store replica has read, kept in memory and coherent with
//! the database through the change sequence, so that a read by id costs the database one shared
//! round trip for many concurrent readers instead of one query each.
//!
//! Why it is correct with several replicas writing: `resource_version` is append-only and its
//! `seq` is committed in order (see the module comment of `postgres.rs`), so the versions with
//! `seq` above the last one this replica has seen are exactly the writes it has not yet heard
//! of, whichever replica made them. Before a read looks into the cache it waits for a *poll*
//! that started after the read arrived: one query for those versions' `(type, id)`, whose keys
//! are then dropped from the cache. Everything committed before the read arrived is therefore
//! either in the cache as read from the database after that commit, or not in the cache at all.
//! Concurrent readers share a poll (the next one starts when the last ends), so at 16 clients
//! one query serves many reads; a lone reader pays the same one round trip as before.
//!
//! An entry may be stored only when no poll changed the cache between the moment the reader
//! looked ([`Fresh::changes`]) and the moment it stores: the version it read from the database
//! after that moment reflects every write the cache has heard of. A poll that finds more than
//! [`POLL_LIMIT`] new versions (a bulk load on another replica) empties the cache instead of
//! reading them all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use quick_cache::unsync::Cache;
use quick_cache::Weighter;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection as _;
use tokio::sync::{watch, Notify};

use crate::{StorageError, StoredVersion};

/// How many new versions one poll reads; more than that and the cache is emptied.
pub(crate) const POLL_LIMIT: i64 = 1000;

type Key = (String, String);

#[derive(Clone)]
struct BodyWeight;

impl Weighter<Key, Arc<StoredVersion>> for BodyWeight {
    fn weight(&self, key: &Key, v: &Arc<StoredVersion>) -> u64 {
        (key.0.len() + key.1.len() + v.body.as_ref().map_or(0, String::len) + 128) as u64
    }
}

struct State {
    entries: Cache<Key, Arc<StoredVersion>, BodyWeight>,
    /// The highest `seq` whose key has been dropped from `entries`.
    seen_seq: i64,
    /// Polls started so far (a reader waits for the one after those started when it arrived).
    polls_started: u64,
    /// Bumped by every poll that dropped or emptied anything.
    changes: u64,
}

/// The end of a poll: how many have ended, and whether the last one reached the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PollEnd {
    ended: u64,
    ok: bool,
}

/// The store's handle; dropping it ends the poller.
pub(crate) struct CurrentCache {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    demand: Notify,
    polled: watch::Sender<PollEnd>,
    closed: AtomicBool,
}

impl Drop for CurrentCache {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.demand.notify_one();
    }
}

/// What a reader may do after its poll: look into the cache, and store what it then reads from
/// the database if nothing changed meanwhile.
pub(crate) struct Fresh {
    changes: u64,
}

impl CurrentCache {
    /// A cache holding up to `budget_bytes`, coherent from `seen_seq` on (the highest `seq` in
    /// the database when it starts empty). Starts its poller, which connects with `options`.
    pub(crate) fn start(options: PgConnectOptions, seen_seq: i64, budget_bytes: u64) -> Self {
        let cache = Self::new(seen_seq, budget_bytes);
        tokio::spawn(poller(cache.shared.clone(), options));
        cache
    }

    fn new(seen_seq: i64, budget_bytes: u64) -> Self {
        let estimated_items = (budget_bytes / 2048).max(16) as usize;
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    entries: Cache::with_weighter(estimated_items, budget_bytes, BodyWeight),
                    seen_seq,
                    polls_started: 0,
                    changes: 0,
                }),
                demand: Notify::new(),
                polled: watch::Sender::new(PollEnd { ended: 0, ok: true }),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Waits for a poll that started after this call. `None` when that poll failed: the
    /// reader then reads the database and leaves the cache alone.
    pub(crate) async fn fresh(&self) -> Option<Fresh> {
        let need = self.state().polls_started + 1;
        let mut rx = self.shared.polled.subscribe();
        self.shared.demand.notify_one();
        let end = *rx.wait_for(|e| e.ended >= need).await.ok()?;
        if !end.ok {
            return None;
        }
        Some(Fresh {
            changes: self.state().changes,
        })
    }

    pub(crate) fn get(&self, resource_type: &str, id: &str) -> Option<Arc<StoredVersion>> {
        // quick_cache looks up by anything `Equivalent` to the key; a pair of borrowed strs is
        // not, so the key is built (two short allocations, far below a round trip).
        let key = (resource_type.to_string(), id.to_string());
        self.state().entries.get(&key).cloned()
    }

    /// Stores `v`, read from the database after `fresh` was taken, unless a poll has changed
    /// the cache since (the version might then predate a write the cache has dropped) or the
    /// cache already holds a later version.
    pub(crate) fn offer(&self, fresh: &Fresh, v: &StoredVersion) {
        let mut state = self.state();
        if state.changes != fresh.changes {
            return;
        }
        let key = (v.resource_type.clone(), v.id.clone());
        if state
            .entries
            .peek(&key)
            .is_some_and(|held| held.seq >= v.seq)
        {
            return;
        }
        state.entries.insert(key, Arc::new(v.clone()));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().entries.len()
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a map that is still a valid cache.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One poll at a time, started when a reader asks for one, on a connection of its own (a poll
/// is the round trip every read waits for; it does not queue for the readers' pool). Ends when
/// the store is dropped.
async fn poller(c: Arc<Shared>, options: PgConnectOptions) {
    let mut conn: Option<PgConnection> = None;
    loop {
        c.demand.notified().await;
        if c.closed.load(Ordering::Acquire) {
            return;
        }
        let (seen_seq, started) = {
            let mut state = c.state();
            state.polls_started += 1;
            (state.seen_seq, state.polls_started)
        };
        let news = match conn.as_mut() {
            Some(conn) => new_versions(conn, seen_seq).await,
            None => match PgConnection::connect_with(&options).await {
                Ok(c) => new_versions(conn.insert(c), seen_seq).await,
                Err(e) => Err(e.into()),
            },
        };
        if news.is_err() {
            // Broken or not: a fresh connection for the next poll.
            conn = None;
        }
        let ok = match news {
            Ok(rows) => {
                apply(&mut c.state(), &rows);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the read cache could not ask for new versions; reads go to the database");
                false
            }
        };
        c.polled.send_replace(PollEnd { ended: started, ok });
    }
}

/// The versions written since `seen_seq`, oldest first, at most [`POLL_LIMIT`] + 1.
async fn new_versions(
    conn: &mut PgConnection,
    seen_seq: i64,
) -> Result<Vec<(i64, Key)>, StorageError> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT seq, res_type, res_id FROM resource_version WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(seen_seq)
    .bind(POLL_LIMIT + 1)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(s, t, i)| (s, (t, i))).collect())
}

fn apply(state: &mut State, rows: &[(i64, Key)]) {
    let Some((last, _)) = rows.last() else { return };
    if rows.len() as i64 > POLL_LIMIT {
        state.entries.clear();
    } else {
        for (_, key) in rows {
            state.entries.remove(key);
        }
    }
    state.seen_seq = *last;
    state.changes += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(rt: &str, id: &str, seq: i64) -> StoredVersion {
        StoredVersion {
            resource_type: rt.into(),
            id: id.into(),
            version: seq,
            seq,
            last_updated: String::new(),
            last_updated_us: 0,
            deleted: false,
            body: Some(format!("{{\"seq\":{seq}}}")),
            site: None,
            traceparent: None,
        }
    }

    fn cache() -> CurrentCache {
        CurrentCache::new(0, 1 << 20)
    }

    fn key(rt: &str, id: &str) -> Key {
        (rt.into(), id.into())
    }

    #[test]
    fn a_poll_drops_the_keys_written_since() {
        let c = cache();
        let f = Fresh { changes: 0 };
        c.offer(&f, &version("Observation", "a", 1));
        c.offer(&f, &version("Observation", "b", 2));
        apply(&mut c.state(), &[(3, key("Observation", "a"))]);
        assert!(c.get("Observation", "a").is_none());
        assert_eq!(c.get("Observation", "b").unwrap().seq, 2);
        assert_eq!(c.state().seen_seq, 3);
    }

    #[test]
    fn a_version_read_before_a_poll_changed_the_cache_is_not_stored() {
        let c = cache();
        let before = Fresh { changes: 0 };
        apply(&mut c.state(), &[(5, key("Observation", "a"))]);
        // Read from the database before the poll dropped "a": it may be the old version.
        c.offer(&before, &version("Observation", "a", 1));
        assert!(c.get("Observation", "a").is_none());
        let after = Fresh {
            changes: c.state().changes,
        };
        c.offer(&after, &version("Observation", "a", 5));
        assert_eq!(c.get("Observation", "a").unwrap().seq, 5);
    }

    #[test]
    fn an_older_version_does_not_replace_a_newer_one() {
        let c = cache();
        let f = Fresh { changes: 0 };
        c.offer(&f, &version("Observation", "a", 7));
        c.offer(&f, &version("Observation", "a", 4));
        assert_eq!(c.get("Observation", "a").unwrap().seq, 7);
    }

    #[test]
    fn more_new_versions_than_a_poll_reads_empty_the_cache() {
        let c = cache();
        let f = Fresh { changes: 0 };
        c.offer(&f, &version("Patient", "p", 1));
        let rows: Vec<_> = (0..=POLL_LIMIT)
            .map(|i| (10 + i, key("Observation", &format!("o{i}"))))
            .collect();
        apply(&mut c.state(), &rows);
        assert_eq!(c.len(), 0);
        assert_eq!(c.state().seen_seq, 10 + POLL_LIMIT);
    }
}
