//! `trialbridge hl7`: HL7 v2 tools for hospital IT and for the benchmarks. `parse` checks
//! message files with the gateway's parser (and times it with `--repeat`); `send` is an MLLP
//! client that sends a message many times over several connections, each with its own
//! MSH-10, and reports throughput and ACK latency.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trialbridge_hl7v2::mllp::{frame, FrameEvent, Framer};
use trialbridge_hl7v2::Message;

/// `trialbridge hl7 ...`
#[derive(Debug, clap::Subcommand)]
pub enum Hl7Command {
    /// Parse message files; print each message's type and control id, or its error.
    Parse(ParseArgs),
    /// Send a message over MLLP repeatedly and measure throughput and ACK latency.
    Send(SendArgs),
}

/// Arguments of `hl7 parse`.
#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// HL7 v2 message files (CR or LF segment ends).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Parse each file this many times and report the mean time per parse.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

/// Arguments of `hl7 send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// MLLP address of the gateway.
    #[arg(long, default_value = "127.0.0.1:2575")]
    pub to: SocketAddr,
    /// The message to send; its MSH-10 is replaced by a unique id per send.
    #[arg(long)]
    pub file: PathBuf,
    /// Connections, each sending one message at a time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// A label printed with the figures.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Runs an `hl7` subcommand.
pub async fn run(cmd: Hl7Command) -> anyhow::Result<()> {
    match cmd {
        Hl7Command::Parse(a) => parse(a),
        Hl7Command::Send(a) => send(a).await,
    }
}

fn parse(a: ParseArgs) -> anyhow::Result<()> {
    let mut failed = 0;
    for f in &a.files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        match Message::parse(&bytes) {
            Ok(m) => {
                let t = Instant::now();
                for _ in 0..a.repeat.max(1) {
                    let m = Message::parse(std::hint::black_box(&bytes)).expect("parsed once");
                    std::hint::black_box(m.segments().count());
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / a.repeat.max(1) as f64;
                // The same, then every component cut out and unescaped (what the peers' parsers
                // build eagerly).
                let t = Instant::now();
                for _ in 0..a.repeat.max(1) {
                    let m = Message::parse(std::hint::black_box(&bytes)).expect("parsed once");
                    let mut n = 0usize;
                    for seg in m.segments() {
                        for f in 1..=seg.len() {
                            for rep in seg.field(f).repetitions() {
                                for c in rep.components() {
                                    n += c.value().len();
                                }
                            }
                        }
                    }
                    std::hint::black_box(n);
                }
                let walk_us = t.elapsed().as_secs_f64() * 1e6 / a.repeat.max(1) as f64;
                let (ty, trigger, _) = m.message_type();
                println!(
                    "{}",
                    serde_json::json!({"file": f.display().to_string(), "type": format!("{ty}^{trigger}"), "control_id": m.control_id(),
                        "version": m.version(), "segments": m.segments().count(), "bytes": bytes.len(), "us_per_parse": (us * 100.0).round() / 100.0, "us_per_parse_and_walk": (walk_us * 100.0).round() / 100.0})
                );
            }
            Err(e) => {
                failed += 1;
                println!(
                    "{}",
                    serde_json::json!({"file": f.display().to_string(), "error": e.to_string()})
                );
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files do not parse", a.files.len());
    }
    Ok(())
}

fn with_control_id(message: &str, id: &str) -> String {
    let mut lines: Vec<String> = message
        .split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if let Some(msh) = lines.first_mut() {
        let sep = msh.chars().nth(3).unwrap_or('|');
        let mut fields: Vec<String> = msh.split(sep).map(String::from).collect();
        if fields.len() > 9 {
            fields[9] = id.to_string();
        }
        *msh = fields.join(&sep.to_string());
    }
    lines.join("\r") + "\r"
}

async fn send(a: SendArgs) -> anyhow::Result<()> {
    let template = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let next = Arc::new(AtomicUsize::new(0));
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.max(1) {
        let (next, template, run_id, to, total) = (
            next.clone(),
            template.clone(),
            run_id.clone(),
            a.to,
            a.requests,
        );
        tasks.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(to).await?;
            stream.set_nodelay(true)?;
            let mut framer = Framer::new(1 << 20);
            let mut buf = vec![0u8; 16 * 1024];
            let mut latencies = Vec::new();
            let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let msg = with_control_id(&template, &format!("B{run_id}-{k}"));
                let t = Instant::now();
                stream.write_all(&frame(msg.as_bytes())).await?;
                let ack = loop {
                    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                        .await??;
                    anyhow::ensure!(n > 0, "the gateway closed the connection");
                    if let Some(FrameEvent::Frame(f)) = framer.push(&buf[..n]).into_iter().next() {
                        break f;
                    }
                };
                latencies.push(t.elapsed());
                let text = String::from_utf8_lossy(&ack);
                let code = text
                    .split('\r')
                    .find(|l| l.starts_with("MSA"))
                    .and_then(|l| l.split('|').nth(1))
                    .unwrap_or("?")
                    .to_string();
                *codes.entry(code).or_default() += 1;
            }
            anyhow::Ok((latencies, codes))
        });
    }
    let mut latencies = Vec::new();
    let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
    while let Some(r) = tasks.join_next().await {
        let (l, c) = r??;
        latencies.extend(l);
        for (k, v) in c {
            *codes.entry(k).or_default() += v;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let p = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({"label": a.label, "scenario": "mllp", "concurrency": a.concurrency, "messages": latencies.len(), "secs": (secs * 100.0).round() / 100.0,
            "messages_per_s": ((latencies.len() as f64 / secs) * 10.0).round() / 10.0, "p50_ms": (p(0.5) * 100.0).round() / 100.0, "p99_ms": (p(0.99) * 100.0).round() / 100.0, "acks": codes})
    );
    Ok(())
}
