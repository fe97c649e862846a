//! `trialbridge audit`: proves the audit trail to an inspector.
//!
//! - `verify` walks the hash chain and names what was done to it: a column edited, a row
//!   deleted in the middle, `audit_entity` rows deleted or added, and, against a signed
//!   checkpoint, a cut-off tail or a chain re-hashed after an edit.
//! - `checkpoint` signs the chain head (sequence and hash) with an Ed25519 key that the
//!   database does not hold, so that whoever can write to the database cannot rewrite the
//!   chain up to that point unnoticed.
//! - `keygen` makes such a key pair.
//!
//! The chain hash alone (SHA-256 without a key) proves only that rows are consistent with each
//! other; the checkpoint is what ties them to a moment an operator witnessed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use trialbridge_storage::{
    audit_entities_of, audit_hash, audit_hash_v2, AccessContext, AuditQuery, AuditRow,
    ResourceStore, AUDIT_GENESIS,
};

/// Audit-trail commands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Recomputes the hash chain; exit code 1 names each kind of tampering found.
    Verify {
        /// A checkpoint written by `audit checkpoint`: the chain must still reach it with the
        /// same hash (finds a cut tail and a re-hashed chain).
        #[arg(long, requires = "public_key")]
        checkpoint: Option<PathBuf>,
        /// The public key (from `audit keygen`) the checkpoint must be signed with.
        #[arg(long, requires = "checkpoint")]
        public_key: Option<PathBuf>,
    },
    /// Verifies the chain, then signs its head and writes the checkpoint to `--out`.
    Checkpoint {
        /// The private key from `audit keygen` (kept away from the database).
        #[arg(long)]
        key: PathBuf,
        /// Where the checkpoint goes (a file; replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes a new Ed25519 key pair: `PREFIX.key` (private, mode 0600) and `PREFIX.pub`.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
}

/// A kind of damage to the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tampering {
    /// A column of a row (body, site, recorded_us, batch) no longer matches its hash.
    EditedColumn,
    /// Rows are missing between two that remain.
    DeletedRow,
    /// A row does not follow the previous row's hash (inserted or reordered).
    BrokenLink,
    /// The row matches its hash only with other `audit_entity` rows than it has.
    EntityRows,
    /// The chain ends before the signed checkpoint.
    CutTail,
    /// The chain is consistent but differs from the signed checkpoint: rewritten after it.
    Rehashed,
    /// A row carries the old (version 1) hash after rows with the full one.
    Downgraded,
}

impl Tampering {
    /// The name `audit verify` prints.
    pub fn name(self) -> &'static str {
        match self {
            Tampering::EditedColumn => "edited column",
            Tampering::DeletedRow => "deleted row",
            Tampering::BrokenLink => "broken link",
            Tampering::EntityRows => "entity rows changed",
            Tampering::CutTail => "cut tail",
            Tampering::Rehashed => "re-hashed chain",
            Tampering::Downgraded => "downgraded hash",
        }
    }
}

/// One finding of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was done.
    pub kind: Tampering,
    /// Where and how, for the operator.
    pub detail: String,
}

/// What a walk of the chain found.
#[derive(Debug, Default)]
pub struct ChainReport {
    /// Chain rows read.
    pub rows: u64,
    /// The last row's sequence and hash.
    pub head: Option<(i64, String)>,
    /// Each problem found, in chain order (at most [`MAX_FINDINGS`]).
    pub findings: Vec<Finding>,
    /// Whether a checkpoint was checked.
    pub checkpoint: Option<Checkpoint>,
}

/// Findings listed before the walk says "and more".
pub const MAX_FINDINGS: usize = 100;

/// A signed chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The chain position signed.
    pub sequence: i64,
    /// Its hash.
    pub hash: String,
    /// When it was signed (RFC 3339).
    pub signed_at: String,
    /// The signing key's public half, base64 (to tell keys apart).
    pub public_key: String,
    /// Ed25519 over [`Checkpoint::message`], base64.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes signed: a fixed label and the three fields, one per line.
    fn message(sequence: i64, hash: &str, signed_at: &str) -> Vec<u8> {
        format!("trialbridge audit checkpoint v1\n{sequence}\n{hash}\n{signed_at}\n").into_bytes()
    }

    /// Checks the signature with `public_key` (raw 32 bytes).
    pub fn check_signature(&self, public_key: &[u8]) -> anyhow::Result<()> {
        let sig = b64()
            .decode(&self.signature)
            .context("the checkpoint's signature is not base64")?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(
                &Self::message(self.sequence, &self.hash, &self.signed_at),
                &sig,
            )
            .map_err(|_| {
                anyhow::anyhow!("the checkpoint's signature does not verify with this public key")
            })
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Walks the whole chain of `store`, and compares it with `checkpoint` if given.
pub async fn walk(
    store: &dyn ResourceStore,
    checkpoint: Option<&Checkpoint>,
) -> anyhow::Result<ChainReport> {
    let ctx = AccessContext::system("trialbridge audit verify");
    let mut report = ChainReport::default();
    let mut last_seq = 0i64;
    let mut last_hash = AUDIT_GENESIS.to_string();
    let mut seen_v2 = false;
    let mut at_checkpoint: Option<String> = None;
    let note = |report: &mut ChainReport, kind: Tampering, detail: String| {
        if report.findings.len() < MAX_FINDINGS {
            report.findings.push(Finding { kind, detail });
        }
    };
    loop {
        let page = store
            .audit_search(
                &ctx,
                &AuditQuery {
                    after_seq: Some(last_seq),
                    count: 2000,
                    ..Default::default()
                },
            )
            .await?;
        let Some(last) = page.last() else { break };
        let entities = store.audit_entities(page[0].seq, last.seq).await?;
        for a in page {
            let name = format!(
                "event {} (AuditEvent/{}{})",
                a.seq,
                a.seq,
                if a.batch { ".N, a batch" } else { "" }
            );
            if a.seq != last_seq + 1 {
                note(
                    &mut report,
                    Tampering::DeletedRow,
                    format!("events {} to {} are missing", last_seq + 1, a.seq - 1),
                );
            } else if a.prev_hash != last_hash {
                note(
                    &mut report,
                    Tampering::BrokenLink,
                    format!("{name} does not follow the previous event's hash"),
                );
            }
            let stored: Vec<String> = entities
                .iter()
                .filter(|(seq, _)| *seq == a.seq)
                .map(|(_, e)| e.clone())
                .collect();
            match a.hash_version {
                1 if seen_v2 => note(
                    &mut report,
                    Tampering::Downgraded,
                    format!("{name} carries the version-1 hash after version-2 rows"),
                ),
                1 => {
                    if audit_hash(&a.prev_hash, a.seq, &a.body) != a.hash {
                        note(
                            &mut report,
                            Tampering::EditedColumn,
                            format!("{name}: its body does not match its hash"),
                        );
                    }
                }
                _ => {
                    seen_v2 = true;
                    let row = |entities: &[String]| {
                        audit_hash_v2(&AuditRow {
                            prev_hash: &a.prev_hash,
                            seq: a.seq,
                            recorded_us: a.recorded_us,
                            site: a.site.as_deref(),
                            batch: a.batch,
                            body: &a.body,
                            entities,
                        })
                    };
                    if row(&audit_entities_of(&stored)) != a.hash {
                        // The body names the entities it was filed under; if the hash holds
                        // with those, the rows of audit_entity were what changed.
                        let named = trial_store::security::audit::entities_named(a.batch, &a.body);
                        if row(&named) == a.hash {
                            note(
                                &mut report,
                                Tampering::EntityRows,
                                format!(
                                    "{name}: its audit_entity rows are {stored:?}, hashed as {named:?}"
                                ),
                            );
                        } else {
                            note(
                                &mut report,
                                Tampering::EditedColumn,
                                format!(
                                    "{name}: a column (body, site, recorded_us or batch) does not match its hash"
                                ),
                            );
                        }
                    }
                }
            }
            if checkpoint.is_some_and(|c| c.sequence == a.seq) {
                at_checkpoint = Some(a.hash.clone());
            }
            report.rows += 1;
            last_seq = a.seq;
            last_hash = a.hash;
        }
    }
    if report.rows > 0 {
        report.head = Some((last_seq, last_hash));
    }
    if let Some(c) = checkpoint {
        match at_checkpoint {
            None if last_seq < c.sequence => note(
                &mut report,
                Tampering::CutTail,
                format!(
                    "the chain ends at event {last_seq}, but the checkpoint of {} signed event {}",
                    c.signed_at, c.sequence
                ),
            ),
            None => note(
                &mut report,
                Tampering::DeletedRow,
                format!("event {} of the checkpoint is missing", c.sequence),
            ),
            Some(h) if h != c.hash => note(
                &mut report,
                Tampering::Rehashed,
                format!(
                    "event {} has hash {h}, but the checkpoint of {} signed {}: the chain was rewritten",
                    c.sequence, c.signed_at, c.hash
                ),
            ),
            Some(_) => {}
        }
        report.checkpoint = Some(c.clone());
    }
    Ok(report)
}

fn read_public_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the public key {}", path.display()))?;
    let key = b64()
        .decode(text.trim())
        .with_context(|| format!("{} is not a base64 public key", path.display()))?;
    anyhow::ensure!(
        key.len() == 32,
        "{} is not an Ed25519 public key (32 bytes)",
        path.display()
    );
    Ok(key)
}

fn read_checkpoint(path: &Path) -> anyhow::Result<Checkpoint> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the checkpoint {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a checkpoint", path.display()))
}

fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    ));
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let _ = private;
        let mut f = o
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Runs a command against the database at `url`.
pub async fn run(c: AuditCommand, url: &str) -> anyhow::Result<()> {
    match c {
        AuditCommand::Keygen { out } => {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("no key could be generated"))?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| anyhow::anyhow!("the generated key is unreadable"))?;
            let key = out.with_extension("key");
            let public = out.with_extension("pub");
            write_atomically(
                &key,
                format!("{}\n", b64().encode(pkcs8.as_ref())).as_bytes(),
                true,
            )?;
            write_atomically(
                &public,
                format!("{}\n", b64().encode(pair.public_key().as_ref())).as_bytes(),
                false,
            )?;
            println!(
                "private key {} (keep it off the database host), public key {}",
                key.display(),
                public.display()
            );
            Ok(())
        }
        AuditCommand::Checkpoint { key, out } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the key {}", key.display()))?;
            let pkcs8 = b64()
                .decode(text.trim())
                .with_context(|| format!("{} is not a base64 key", key.display()))?;
            let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| {
                anyhow::anyhow!(
                    "{} is not an Ed25519 key from `audit keygen`",
                    key.display()
                )
            })?;
            let store = trialbridge_storage::open(url).await?;
            let report = walk(&*store, None).await?;
            if let Some(f) = report.findings.first() {
                anyhow::bail!(
                    "not signing a damaged chain: {} at {} ({} problem(s); run `audit verify`)",
                    f.kind.name(),
                    f.detail,
                    report.findings.len()
                );
            }
            let Some((sequence, hash)) = report.head else {
                anyhow::bail!("the audit trail is empty: nothing to sign");
            };
            let signed_at = now_rfc3339();
            let signature = pair.sign(&Checkpoint::message(sequence, &hash, &signed_at));
            let c = Checkpoint {
                sequence,
                hash,
                signed_at,
                public_key: b64().encode(pair.public_key().as_ref()),
                signature: b64().encode(signature.as_ref()),
            };
            write_atomically(
                &out,
                format!("{}\n", serde_json::to_string_pretty(&c)?).as_bytes(),
                false,
            )?;
            println!(
                "signed event {} (hash {}) into {}",
                c.sequence,
                c.hash,
                out.display()
            );
            Ok(())
        }
        AuditCommand::Verify {
            checkpoint,
            public_key,
        } => {
            let checkpoint = match (checkpoint, public_key) {
                (Some(c), Some(k)) => {
                    let c = read_checkpoint(&c)?;
                    c.check_signature(&read_public_key(&k)?)?;
                    Some(c)
                }
                _ => None,
            };
            let store = trialbridge_storage::open(url).await?;
            let report = walk(&*store, checkpoint.as_ref()).await?;
            if report.findings.is_empty() {
                let head = report
                    .head
                    .as_ref()
                    .map_or("empty".to_string(), |(s, h)| format!("event {s}, hash {h}"));
                match &report.checkpoint {
                    Some(c) => println!(
                        "audit trail intact: {} chain rows, head {head}; reaches the checkpoint of {} (event {})",
                        report.rows, c.signed_at, c.sequence
                    ),
                    None => println!(
                        "audit trail intact: {} chain rows, head {head} (no checkpoint given: a cut tail or a re-hashed chain cannot be seen)",
                        report.rows
                    ),
                }
                return Ok(());
            }
            for f in &report.findings {
                eprintln!("{}: {}", f.kind.name(), f.detail);
            }
            let mut kinds: Vec<&str> = report.findings.iter().map(|f| f.kind.name()).collect();
            kinds.dedup();
            anyhow::bail!(
                "audit trail broken ({}): {} finding(s)",
                kinds.join(", "),
                report.findings.len()
            )
        }
    }
}
