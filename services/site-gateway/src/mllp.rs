//! The MLLP listener: many messages per connection, split and coalesced frames, a frame size
//! limit, an idle timeout, a connection limit and graceful shutdown. A frame that is too large
//! gets an AR; bytes outside frames are skipped and logged; the connection keeps serving.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use trialbridge_hl7v2::ack::{self, AckCode, AckError, Acknowledged};
use trialbridge_hl7v2::mllp::{frame, FrameEvent, Framer};

use crate::Gateway;

/// Accepts connections until `stop` turns true, then waits for open connections to finish
/// the message they are on.
pub async fn serve(gateway: Gateway, listener: TcpListener, stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(gateway.config.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "MLLP connection refused: connection limit reached");
                    drop(stream);
                    continue;
                };
                let g = gateway.clone();
                let stop = stop.clone();
                tasks.spawn(async move {
                    connection(g, stream, stop).await;
                    drop(permit);
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn connection(gateway: Gateway, mut stream: TcpStream, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut framer = Framer::new(gateway.config.max_frame_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            _ = stop.wait_for(|s| *s), if !framer.in_frame() => return,
            r = tokio::time::timeout(gateway.config.idle_timeout, stream.read(&mut buf)) => r,
        };
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Err(_) => {
                tracing::info!("MLLP connection idle too long: closed");
                return;
            }
            Ok(Ok(n)) => n,
        };
        let before = framer.skipped();
        for event in framer.push(&buf[..n]) {
            let answer = match event {
                FrameEvent::Frame(bytes) => gateway.receive_frame(&bytes).await,
                FrameEvent::TooLarge { size } => {
                    let _ = gateway.db.bump("frames_too_large", 1).await;
                    let of = Acknowledged::unparsed(b"");
                    let text = format!(
                        "the frame of {size} bytes exceeds the limit of {} bytes",
                        gateway.config.max_frame_bytes
                    );
                    Some(ack::build(
                        &of,
                        AckCode::AR,
                        &[AckError::message("100", text)],
                        "NAK",
                        "0",
                    ))
                }
            };
            if let Some(a) = answer {
                if stream.write_all(&frame(a.as_bytes())).await.is_err() {
                    return;
                }
            }
        }
        if framer.skipped() > before {
            tracing::warn!(
                bytes = framer.skipped() - before,
                "MLLP bytes outside a frame were skipped"
            );
        }
    }
}
