//! The MLLP listener: many messages per connection, split and coalesced frames, a frame size
//! limit, a connection limit overall and per sender address, timeouts and a bounded shutdown.
//! A frame that is too large gets an AR; bytes outside frames are skipped and logged; a frame
//! cut short by the next one's start byte is dropped unacknowledged (the sender resends it).
//!
//! Who holds a connection must use it: a connection is idle from its last complete frame (a
//! CR or other bytes outside a frame do not count), and is closed after `idle_timeout`; a
//! started frame must end within `frame_timeout`. When the limits are reached, a new sender
//! takes the place of the connection idle the longest (if it has been idle a moment), so idle
//! sockets cannot lock the hospital's interface engine out. Every refused or closed connection
//! is logged and counted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use trialbridge_hl7v2::ack::{self, AckCode, AckError, Acknowledged};
use trialbridge_hl7v2::mllp::{frame, FrameEvent, Framer};

use crate::Gateway;

/// How long a connection must have gone without a complete frame before a new sender may
/// take its place.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

struct Slot {
    peer: IpAddr,
    /// The last complete frame (or the connect).
    last_frame: Instant,
    in_frame: bool,
    close: Arc<Notify>,
}

/// The open MLLP connections and counters of what happened to connections (since start).
#[derive(Default)]
pub struct Connections {
    slots: Mutex<(u64, HashMap<u64, Slot>)>,
    accepted: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    idle_closed: AtomicU64,
    frame_timeouts: AtomicU64,
    abandoned_frames: AtomicU64,
}

/// A connection's place in the table; leaving it frees the place.
struct Admission {
    id: u64,
    close: Arc<Notify>,
    table: Arc<Connections>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut slots = self.table.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.1.remove(&self.id);
    }
}

impl Connections {
    /// The counters, for `/status` and `/metrics`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let open = self.slots.lock().unwrap_or_else(|p| p.into_inner()).1.len() as u64;
        vec![
            ("mllp_connections_open", open),
            (
                "mllp_connections_accepted",
                self.accepted.load(Ordering::Relaxed),
            ),
            (
                "mllp_connections_refused",
                self.refused.load(Ordering::Relaxed),
            ),
            (
                "mllp_connections_evicted",
                self.evicted.load(Ordering::Relaxed),
            ),
            (
                "mllp_connections_idle_closed",
                self.idle_closed.load(Ordering::Relaxed),
            ),
            (
                "mllp_frame_timeouts",
                self.frame_timeouts.load(Ordering::Relaxed),
            ),
            (
                "mllp_frames_abandoned",
                self.abandoned_frames.load(Ordering::Relaxed),
            ),
        ]
    }

    /// Takes a place for a connection from `peer`, making room by closing the connection idle
    /// the longest when a limit is reached; `None` when no place can be made.
    fn admit(self: &Arc<Self>, peer: IpAddr, max: usize, per_address: usize) -> Option<Admission> {
        let now = Instant::now();
        let mut guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (next, slots) = &mut *guard;
        let from_peer = slots.values().filter(|s| s.peer == peer).count();
        let full = if from_peer >= per_address {
            Some(true)
        } else if slots.len() >= max {
            Some(false)
        } else {
            None
        };
        if let Some(same_peer) = full {
            let victim = slots
                .iter()
                .filter(|(_, s)| !s.in_frame && (!same_peer || s.peer == peer))
                .filter(|(_, s)| now.duration_since(s.last_frame) >= EVICTABLE_AFTER)
                .min_by_key(|(_, s)| s.last_frame)
                .map(|(id, _)| *id)?;
            if let Some(s) = slots.remove(&victim) {
                s.close.notify_one();
                self.evicted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %s.peer, "MLLP connection closed to make room for a new sender (no complete frame for {:?})", now.duration_since(s.last_frame));
            }
        }
        *next += 1;
        let id = *next;
        let close = Arc::new(Notify::new());
        slots.insert(
            id,
            Slot {
                peer,
                last_frame: now,
                in_frame: false,
                close: close.clone(),
            },
        );
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Admission {
            id,
            close,
            table: self.clone(),
        })
    }

    fn update(&self, id: u64, in_frame: bool, completed: bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.1.get_mut(&id) {
            s.in_frame = in_frame;
            if completed {
                s.last_frame = Instant::now();
            }
        }
    }
}

/// Accepts connections until `stop` turns true, then lets open connections finish the frame
/// they are on; the caller bounds that by the grace period.
pub async fn serve(gateway: Gateway, listener: TcpListener, stop: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut stopping = stop.clone();
    let table = gateway.connections.clone();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let admission = table.admit(
                    peer.ip(),
                    gateway.config.max_connections,
                    gateway.config.max_connections_per_address,
                );
                let Some(admission) = admission else {
                    table.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "MLLP connection refused: the connection limits are reached and every connection is busy");
                    drop(stream);
                    continue;
                };
                let g = gateway.clone();
                let stop = stop.clone();
                tasks.spawn(async move {
                    connection(g, stream, peer, stop, &admission).await;
                    drop(admission);
                });
            }
        }
        // Finished connections leave the set as they go.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn connection(
    gateway: Gateway,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    admission: &Admission,
) {
    let _ = stream.set_nodelay(true);
    let table = &gateway.connections;
    let config = &gateway.config;
    let mut framer = Framer::new(config.max_frame_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    let mut idle_deadline = Instant::now() + config.idle_timeout;
    let mut frame_deadline: Option<Instant> = None;
    loop {
        let deadline = frame_deadline.unwrap_or(idle_deadline);
        let read = tokio::select! {
            _ = stop.wait_for(|s| *s), if !framer.in_frame() => return,
            _ = admission.close.notified() => return,
            r = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => r,
        };
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Err(_) if frame_deadline.is_some() => {
                table.frame_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "MLLP frame not completed within {:?}: connection closed, the frame dropped unacknowledged", config.frame_timeout);
                return;
            }
            Err(_) => {
                table.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, "MLLP connection without a complete frame for {:?}: closed", config.idle_timeout);
                return;
            }
            Ok(Ok(n)) => n,
        };
        let before = framer.skipped();
        let was_in_frame = framer.in_frame();
        let events = framer.push(&buf[..n]);
        let mut completed = false;
        for event in events {
            let answer = match event {
                FrameEvent::Frame(bytes) => {
                    completed = true;
                    gateway.receive_frame(&bytes).await
                }
                FrameEvent::TooLarge { size } => {
                    completed = true;
                    let _ = gateway.db.bump("frames_too_large", 1).await;
                    let of = Acknowledged::unparsed(b"");
                    let text = format!(
                        "the frame of {size} bytes exceeds the limit of {} bytes",
                        config.max_frame_bytes
                    );
                    Some(ack::build(
                        &of,
                        AckCode::AR,
                        &[AckError::message("100", text)],
                        "NAK",
                        "0",
                    ))
                }
                FrameEvent::Abandoned { size } => {
                    table.abandoned_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, size, "an MLLP frame was cut short by the start of the next one (its end byte was lost): dropped unacknowledged");
                    None
                }
            };
            if let Some(a) = answer {
                if stream.write_all(&frame(a.as_bytes())).await.is_err() {
                    return;
                }
            }
        }
        if completed {
            idle_deadline = Instant::now() + config.idle_timeout;
        }
        // A frame's clock starts with its first byte and restarts with each new frame.
        frame_deadline = match (framer.in_frame(), was_in_frame && !completed) {
            (false, _) => None,
            (true, true) => frame_deadline,
            (true, false) => Some(Instant::now() + config.frame_timeout),
        };
        table.update(admission.id, framer.in_frame(), completed);
        if framer.skipped() > before {
            tracing::warn!(
                %peer,
                bytes = framer.skipped() - before,
                "MLLP bytes outside a frame were skipped"
            );
        }
        if *stop.borrow() && !framer.in_frame() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_sender_takes_the_place_of_the_longest_idle_connection() {
        let table = Arc::new(Connections::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = table.admit(a, 2, 2).unwrap();
        let second = table.admit(a, 2, 2).unwrap();
        // Both just connected: nobody can be asked to leave yet.
        assert!(table.admit(b, 2, 2).is_none());
        // Make them idle, the first the longest; the second is inside a frame.
        {
            let mut slots = table.slots.lock().unwrap();
            let past = Instant::now() - Duration::from_secs(10);
            slots.1.get_mut(&first.id).unwrap().last_frame = past;
            slots.1.get_mut(&second.id).unwrap().last_frame = past - Duration::from_secs(5);
            slots.1.get_mut(&second.id).unwrap().in_frame = true;
        }
        let third = table.admit(b, 2, 2).expect("room made");
        assert!(!table.slots.lock().unwrap().1.contains_key(&first.id));
        assert_eq!(table.evicted.load(Ordering::Relaxed), 1);
        // Per address: a third connection of one address replaces that address's idlest.
        drop(third);
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let _c1 = table.admit(c, 10, 1).unwrap();
        assert!(table.admit(c, 10, 1).is_none(), "the only one is fresh");
    }
}
