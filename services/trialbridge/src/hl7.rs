//! `trialbridge hl7`: HL7 v2 tools for hospital IT and for the benchmarks. `parse` checks
//! message files with the gateway's parser (and times it with `--repeat`); `send` is an MLLP
//! client: it sends a file's messages once each and prints their ACKs, or, with `--requests`,
//! sends them many times over several connections, each with its own MSH-10, and reports
//! throughput and ACK latency (at full speed, or at a fixed rate with `--rate`).
//!
//! Files are read as people have them ([`trialbridge_hl7v2::file`]): CR, LF or CRLF segment
//! ends, bare or MLLP-framed, one message or several; errors name the file and line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trialbridge_hl7v2::file::{line_of, split_file, FileMessage};
use trialbridge_hl7v2::mllp::{frame, FrameEvent, Framer};
use trialbridge_hl7v2::{parse_batch, Message};

/// `trialbridge hl7 ...`
#[derive(Debug, clap::Subcommand)]
pub enum Hl7Command {
    /// Parse message files; print each message's type and control id, or its error.
    Parse(ParseArgs),
    /// Send a file's messages over MLLP and print their ACKs, or (with --requests) send them
    /// many times and measure throughput and ACK latency.
    Send(SendArgs),
}

/// Arguments of `hl7 parse`.
#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// HL7 v2 message files: CR, LF or CRLF segment ends, bare or MLLP-framed, one message or
    /// several (or an FHS/BHS batch).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Parse each message this many times and report the mean time per parse.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

/// Arguments of `hl7 send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// MLLP address of the gateway.
    #[arg(long, default_value = "127.0.0.1:2575")]
    pub to: SocketAddr,
    /// The messages to send (read as by `hl7 parse`).
    #[arg(long)]
    pub file: PathBuf,
    /// Load mode: send this many messages in all, the file's messages in turn, each with a
    /// unique MSH-10, and report throughput and ACK latency. Without it, each message of the
    /// file is sent once as written and its ACK printed.
    #[arg(long)]
    pub requests: Option<usize>,
    /// Load mode: connections, each sending one message at a time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Load mode: send at this many messages per second in all (an open loop: each message
    /// has its scheduled time, and its latency counts from then, so a stalled gateway shows
    /// in the figures instead of slowing the client down). Without it, as fast as the ACKs
    /// come back.
    #[arg(long)]
    pub rate: Option<f64>,
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

/// The bytes of a message file (`split_file` cuts them into messages).
fn read_messages(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The file line a parse error of one message points at.
fn error_line(part: &FileMessage<'_>, e: &trialbridge_hl7v2::ParseError) -> usize {
    part.line + e.offset().map_or(0, |o| line_of(part.bytes, o) - 1)
}

/// What to do about a message that does not parse.
fn hint(e: &trialbridge_hl7v2::ParseError) -> &'static str {
    use trialbridge_hl7v2::ParseError as E;
    match e {
        E::NoMsh { .. } => "each message starts with its MSH segment; remove what comes before it",
        E::Empty => "the file holds no message",
        E::TruncatedMsh | E::BadEncodingCharacters(_) => {
            "MSH must begin with the field separator and the encoding characters, as in MSH|^~\\&|"
        }
        E::BadSegmentId { .. } => {
            "every line of a message is a segment starting with its three-letter id; a line break inside a field splits it"
        }
        E::UnsupportedCharset(_) | E::BadEncoding { .. } => {
            "save the file as UTF-8, or declare its character set in MSH-18 (8859/1)"
        }
        E::BadBatch(_) => "make BTS-1 and FTS-1 count the messages and batches the file holds",
        E::NestedHeader { .. } => "start each message on a line of its own beginning with MSH",
    }
}

fn parse(a: ParseArgs) -> anyhow::Result<()> {
    let (mut failed, mut total) = (0usize, 0usize);
    let repeat = a.repeat.max(1);
    for f in &a.files {
        let bytes = read_messages(f)?;
        let file = f.display().to_string();
        let parts = match split_file(&bytes) {
            Ok(p) => p,
            Err(e) => {
                failed += 1;
                total += 1;
                println!(
                    "{}",
                    serde_json::json!({"file": file, "error": e.to_string(),
                    "hint": "frame each message as 0x0B message 0x1C 0x0D, or leave the framing out altogether"})
                );
                continue;
            }
        };
        for part in &parts {
            total += 1;
            let messages = match parse_batch(part.bytes) {
                Ok(m) => m,
                Err(e) => {
                    failed += 1;
                    println!(
                        "{}",
                        serde_json::json!({"file": file, "line": error_line(part, &e), "error": e.to_string(), "hint": hint(&e)})
                    );
                    continue;
                }
            };
            let batch = messages.len() > 1;
            for m in &messages {
                let text = m.text().as_bytes();
                let t = Instant::now();
                for _ in 0..repeat {
                    let m = Message::parse(std::hint::black_box(text)).expect("parsed once");
                    std::hint::black_box(m.segments().count());
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / repeat as f64;
                // The same, then every component cut out and unescaped (what the peers' parsers
                // build eagerly).
                let t = Instant::now();
                for _ in 0..repeat {
                    let m = Message::parse(std::hint::black_box(text)).expect("parsed once");
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
                let walk_us = t.elapsed().as_secs_f64() * 1e6 / repeat as f64;
                let (ty, trigger, _) = m.message_type();
                println!(
                    "{}",
                    serde_json::json!({"file": file, "line": part.line, "in_batch": batch, "type": format!("{ty}^{trigger}"), "control_id": m.control_id(),
                        "version": m.version(), "segments": m.segments().count(), "bytes": text.len(), "us_per_parse": (us * 100.0).round() / 100.0, "us_per_parse_and_walk": (walk_us * 100.0).round() / 100.0})
                );
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {total} messages do not parse (each error above names its file and line)"
        );
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

/// HL7 segment ends are CR; files written on a PC or in an editor carry LF or CRLF.
fn with_cr_segment_ends(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.push(b'\r');
                i += 1;
            }
            b'\n' => out.push(b'\r'),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Reads one ACK frame from the connection.
async fn read_ack(
    stream: &mut tokio::net::TcpStream,
    framer: &mut Framer,
    buf: &mut [u8],
) -> anyhow::Result<Vec<u8>> {
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(buf))
            .await
            .context("no ACK within 30 s")??;
        anyhow::ensure!(
            n > 0,
            "the gateway closed the connection before it acknowledged"
        );
        if let Some(FrameEvent::Frame(f)) = framer.push(&buf[..n]).into_iter().next() {
            return Ok(f);
        }
    }
}

/// The MSA segment of an ACK and its code (MSA-1).
fn msa(ack: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(ack);
    let segment = text
        .split(['\r', '\n'])
        .find(|l| l.starts_with("MSA"))
        .unwrap_or("")
        .to_string();
    let sep = segment.chars().nth(3).unwrap_or('|');
    let code = segment.split(sep).nth(1).unwrap_or("?").to_string();
    (segment, code)
}

async fn send(a: SendArgs) -> anyhow::Result<()> {
    let bytes = read_messages(&a.file)?;
    let file = a.file.display().to_string();
    let parts = split_file(&bytes).with_context(|| format!("{file}: not a message file"))?;
    let mut messages = Vec::with_capacity(parts.len());
    for part in &parts {
        if let Err(e) = parse_batch(part.bytes) {
            anyhow::bail!(
                "{file}:{}: {e}; nothing was sent ({})",
                error_line(part, &e),
                hint(&e)
            );
        }
        messages.push((part.line, with_cr_segment_ends(part.bytes)));
    }
    match a.requests {
        None => send_each(&a, &file, &messages).await,
        Some(total) => load(&a, &messages, total).await,
    }
}

/// Sends each message once, in order, on one connection, and prints its ACK.
async fn send_each(a: &SendArgs, file: &str, messages: &[(usize, Vec<u8>)]) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(a.to)
        .await
        .with_context(|| {
            format!(
                "cannot connect to {} (is the site gateway's MLLP listener there? see --to)",
                a.to
            )
        })?;
    stream.set_nodelay(true)?;
    let mut framer = Framer::new(1 << 20);
    let mut buf = vec![0u8; 16 * 1024];
    let mut refused = 0;
    for (line, message) in messages {
        stream.write_all(&frame(message)).await?;
        let ack = read_ack(&mut stream, &mut framer, &mut buf)
            .await
            .with_context(|| format!("{file}:{line}"))?;
        let (segment, code) = msa(&ack);
        let text = String::from_utf8_lossy(&ack);
        let errors: Vec<&str> = text.split('\r').filter(|l| l.starts_with("ERR")).collect();
        if !matches!(code.as_str(), "AA" | "CA") {
            refused += 1;
        }
        println!(
            "{}",
            serde_json::json!({"file": file, "line": line, "msa": segment, "ack": code, "err": errors})
        );
    }
    if refused > 0 {
        anyhow::bail!(
            "{refused} of {} messages were not accepted (their ERR segments above say why)",
            messages.len()
        );
    }
    Ok(())
}

/// Sends `total` messages over `a.concurrency` connections and prints throughput and ACK
/// latency.
async fn load(a: &SendArgs, messages: &[(usize, Vec<u8>)], total: usize) -> anyhow::Result<()> {
    let templates: Arc<Vec<String>> = Arc::new(
        messages
            .iter()
            .map(|(_, m)| String::from_utf8_lossy(m).into_owned())
            .collect(),
    );
    if let Some(rate) = a.rate {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate must be a positive number of messages per second"
        );
    }
    let next = Arc::new(AtomicUsize::new(0));
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.max(1) {
        let (next, templates, run_id, to, rate) = (
            next.clone(),
            templates.clone(),
            run_id.clone(),
            a.to,
            a.rate,
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
                let msg =
                    with_control_id(&templates[k % templates.len()], &format!("B{run_id}-{k}"));
                // Open loop: a message whose connection is still busy at its scheduled time
                // counts from that time, so waiting for the gateway's last ACK is part of its
                // latency. One whose connection is free counts from when it is sent: the
                // timer wakes up to a millisecond late (its resolution), and that delay is the
                // client's, not the gateway's.
                let t = match rate {
                    Some(r) => {
                        let at = started + Duration::from_secs_f64(k as f64 / r);
                        if Instant::now() < at {
                            tokio::time::sleep_until(at.into()).await;
                            Instant::now()
                        } else {
                            at
                        }
                    }
                    None => Instant::now(),
                };
                stream.write_all(&frame(msg.as_bytes())).await?;
                let ack = read_ack(&mut stream, &mut framer, &mut buf).await?;
                latencies.push(t.elapsed());
                *codes.entry(msa(&ack).1).or_default() += 1;
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
        serde_json::json!({"label": a.label, "scenario": "mllp", "concurrency": a.concurrency, "offered_rate": a.rate, "messages": latencies.len(), "secs": (secs * 100.0).round() / 100.0,
            "messages_per_s": ((latencies.len() as f64 / secs) * 10.0).round() / 10.0, "p50_ms": (p(0.5) * 100.0).round() / 100.0, "p99_ms": (p(0.99) * 100.0).round() / 100.0, "acks": codes})
    );
    Ok(())
}
