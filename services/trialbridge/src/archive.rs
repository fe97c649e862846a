//! `trialbridge archive`: the trial's records for the years after the trial (EU CTR Art. 58:
//! 25 years; ATMPs: 30), as a package an inspector can read and verify without trialbridge,
//! its database or its version.
//!
//! `archive --to DIR` writes, from one snapshot of the change sequence, every version of every
//! resource (NDJSON, change-sequence order), the audit trail with its hash chain (and a signed
//! checkpoint when given), the study definition, the FHIR R4 definitions the data uses, a
//! plain-text README, and a manifest (`sha256sum` format) signed with Ed25519
//! (`openssl pkeyutl -verify` checks it). UTF-8 JSON text only, no compression.
//! `archive verify DIR` checks all of it; `archive restore DIR` loads it into an empty store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde_json::{json, Value};
use sha2::Digest;
use trialbridge_storage::{
    audit_entities_of, audit_hash, audit_hash_v2, AccessContext, AuditQuery, AuditRow,
    HistoryQuery, HistoryScope, ResourceStore, AUDIT_GENESIS,
};

/// The format this module writes and reads.
const FORMAT: &str = "trialbridge-archive/1";

/// The official R4 definitions an archive may carry (`archive/generate_definitions.py`).
const DEFINITIONS: &[u8] = include_bytes!("../archive/r4-definitions.ndjson.gz");

/// Files outside the manifest: the manifest itself, its signature and the key that checks it.
const UNLISTED: [&str; 3] = ["manifest.sha256", "manifest.sig", "signing-key.pem"];

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// `trialbridge archive ...`
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    command: Option<ArchiveCommand>,
    /// Where to write the archive (a new or empty directory).
    #[arg(long)]
    to: Option<PathBuf>,
    /// The Ed25519 private key that signs the manifest (from `trialbridge audit keygen`).
    /// Without it a key is made for this archive alone and its fingerprint printed: record it
    /// where the archive's description is kept (the trial master file).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The latest signed audit checkpoint (`trialbridge audit checkpoint`), to carry along.
    #[arg(long, requires = "checkpoint_key")]
    checkpoint: Option<PathBuf>,
    /// The checkpoint's public key (`PREFIX.pub` of `trialbridge audit keygen`).
    #[arg(long, requires = "checkpoint")]
    checkpoint_key: Option<PathBuf>,
}

/// Archive subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ArchiveCommand {
    /// Check an archive: every file against the signed manifest, the audit chain, the signed
    /// checkpoint, the version sequence. Exit code 1 names each problem.
    Verify {
        /// The archive directory.
        dir: PathBuf,
        /// The SHA-256 fingerprint (hex) the signing key must have, as recorded when the
        /// archive was written.
        #[arg(long)]
        key_fingerprint: Option<String>,
    },
    /// Load an archive into an empty store: the same resources, versions and audit chain.
    Restore {
        /// The archive directory.
        dir: PathBuf,
    },
}

impl ArchiveArgs {
    /// Whether this reads an existing store (`archive --to`; `verify` reads only the archive,
    /// `restore` fills a new database).
    pub fn reads_store(&self) -> bool {
        self.command.is_none()
    }
}

/// Runs `trialbridge archive`.
pub async fn run(a: ArchiveArgs, database_url: &str) -> anyhow::Result<()> {
    match a.command {
        Some(ArchiveCommand::Verify {
            dir,
            key_fingerprint,
        }) => {
            let report = verify(&dir, key_fingerprint.as_deref())?;
            println!("{}", report.summary());
            if !report.problems.is_empty() {
                for p in &report.problems {
                    eprintln!("archive verify: {p}");
                }
                anyhow::bail!(
                    "{} problem(s) in {}; see above",
                    report.problems.len(),
                    dir.display()
                );
            }
            Ok(())
        }
        Some(ArchiveCommand::Restore { dir }) => {
            let store = trialbridge_storage::open(database_url).await?;
            let n = restore(&*store, &dir).await?;
            println!(
                "{}",
                json!({"restored_versions": n.0, "restored_audit_events": n.1})
            );
            Ok(())
        }
        None => {
            let to = a.to.clone().context(
                "say where the archive goes: trialbridge archive --to DIR (or archive verify DIR)",
            )?;
            let store = trialbridge_storage::open(database_url).await?;
            let summary = create(&*store, &to, &a).await?;
            println!("{summary}");
            Ok(())
        }
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The public key as PEM (SubjectPublicKeyInfo), as `openssl pkey -pubin` reads it.
fn public_pem(public: &[u8]) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    let text = b64().encode(&der);
    format!("-----BEGIN PUBLIC KEY-----\n{text}\n-----END PUBLIC KEY-----\n")
}

/// The 32 key bytes of a PEM public key written by [`public_pem`].
fn public_from_pem(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = b64()
        .decode(body.trim())
        .context("signing-key.pem is not PEM")?;
    anyhow::ensure!(
        der.len() == 44 && der[..12] == ED25519_SPKI_PREFIX,
        "signing-key.pem is not an Ed25519 public key"
    );
    Ok(der[12..].to_vec())
}

/// The key's fingerprint: SHA-256 of its DER form (what
/// `openssl pkey -pubin -in signing-key.pem -outform DER | sha256sum` prints).
fn fingerprint(public: &[u8]) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    sha256_hex(&der)
}

/// Writes `bytes` to `dir/rel`, making folders.
fn put(dir: &Path, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// One line of `resources/versions.ndjson`; the resource is the stored text itself (not
/// re-serialized), so a restore gives back the very bytes.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionLine {
    seq: i64,
    resource_type: String,
    id: String,
    version_id: i64,
    last_updated: String,
    deleted: bool,
    site: Option<String>,
    resource: Option<Box<serde_json::value::RawValue>>,
}

fn version_line(v: &trialbridge_storage::StoredVersion) -> anyhow::Result<String> {
    let resource = match &v.body {
        Some(b) => Some(serde_json::value::RawValue::from_string(b.clone())?),
        None => None,
    };
    Ok(serde_json::to_string(&VersionLine {
        seq: v.seq,
        resource_type: v.resource_type.clone(),
        id: v.id.clone(),
        version_id: v.version,
        last_updated: v.last_updated.clone(),
        deleted: v.deleted,
        site: v.site.clone(),
        resource,
    })?)
}

/// The definitions an archive of these resource types needs: their StructureDefinitions,
/// every datatype's, the ValueSets those bind (required or extensible) and the CodeSystems
/// the ValueSets include.
fn definitions_for(types: &BTreeSet<String>) -> anyhow::Result<Vec<Value>> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DEFINITIONS).read_to_string(&mut text)?;
    let all: Vec<Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let by_url: BTreeMap<&str, &Value> = all
        .iter()
        .filter_map(|r| Some((r["url"].as_str()?, r)))
        .collect();
    let mut out: Vec<Value> = all
        .iter()
        .filter(|r| {
            r["resourceType"] == "StructureDefinition"
                && (r["kind"] != "resource"
                    || r["type"].as_str().is_some_and(|t| types.contains(t)))
        })
        .cloned()
        .collect();
    let mut bound = BTreeSet::new();
    for sd in &out {
        for el in sd["snapshot"]["element"].as_array().into_iter().flatten() {
            let b = &el["binding"];
            if matches!(b["strength"].as_str(), Some("required" | "extensible")) {
                if let Some(vs) = b["valueSet"].as_str() {
                    bound.insert(vs.split('|').next().unwrap_or(vs).to_string());
                }
            }
        }
    }
    let mut systems = BTreeSet::new();
    for url in &bound {
        if let Some(vs) = by_url
            .get(url.as_str())
            .filter(|v| v["resourceType"] == "ValueSet")
        {
            for inc in vs["compose"]["include"].as_array().into_iter().flatten() {
                if let Some(s) = inc["system"].as_str() {
                    systems.insert(s.to_string());
                }
            }
            out.push((*vs).clone());
        }
    }
    for url in &systems {
        if let Some(cs) = by_url
            .get(url.as_str())
            .filter(|v| v["resourceType"] == "CodeSystem")
        {
            out.push((*cs).clone());
        }
    }
    Ok(out)
}

/// The signing key: the operator's (`--key`, PKCS#8 in base64 as `audit keygen` writes it) or
/// one made for this archive.
fn signing_key(path: Option<&Path>) -> anyhow::Result<Ed25519KeyPair> {
    let pkcs8 = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the key {}", p.display()))?;
            b64()
                .decode(text.trim())
                .with_context(|| format!("{} is not a base64 key", p.display()))?
        }
        None => Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("no key could be made"))?
            .as_ref()
            .to_vec(),
    };
    Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| anyhow::anyhow!("the key is not an Ed25519 private key (PKCS#8)"))
}

async fn create(store: &dyn ResourceStore, dir: &Path, a: &ArchiveArgs) -> anyhow::Result<Value> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty: an archive goes into a new or empty directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let key = signing_key(a.key.as_deref())?;
    let ctx = AccessContext::system("trialbridge archive");
    let as_of = store.last_seq(&ctx).await?;

    // Every version, oldest first, up to the snapshot.
    let mut versions = std::io::BufWriter::new(std::fs::File::create({
        std::fs::create_dir_all(dir.join("resources"))?;
        dir.join("resources/versions.ndjson")
    })?);
    let (mut n_versions, mut after) = (0u64, 0i64);
    let mut current: BTreeMap<(String, String), bool> = BTreeMap::new();
    'pages: loop {
        let mut q = HistoryQuery::oldest_first(HistoryScope::System, after, 1000);
        q.snapshot_seq = Some(as_of);
        let page = store.history(&ctx, &q).await?;
        if page.versions.is_empty() {
            break;
        }
        for v in &page.versions {
            if v.seq > as_of {
                break 'pages;
            }
            writeln!(versions, "{}", version_line(v)?)?;
            current.insert((v.resource_type.clone(), v.id.clone()), v.deleted);
            n_versions += 1;
            after = v.seq;
        }
        if !page.has_more {
            break;
        }
    }
    versions.flush()?;
    let types: BTreeSet<String> = current.keys().map(|(t, _)| t.clone()).collect();
    let live = current.values().filter(|d| !**d).count();

    // The audit trail, row by row with the entities each row was hashed with.
    let mut events = std::io::BufWriter::new(std::fs::File::create({
        std::fs::create_dir_all(dir.join("audit"))?;
        dir.join("audit/events.ndjson")
    })?);
    let (mut n_audit, mut last_audit, mut head) = (0u64, 0i64, None);
    loop {
        let page = store
            .audit_search(
                &ctx,
                &AuditQuery {
                    after_seq: Some(last_audit),
                    count: 2000,
                    ..Default::default()
                },
            )
            .await?;
        let Some(last) = page.last() else { break };
        let entities = store.audit_entities(page[0].seq, last.seq).await?;
        for r in &page {
            let mine: Vec<String> = entities
                .iter()
                .filter(|(s, _)| *s == r.seq)
                .map(|(_, e)| e.clone())
                .collect();
            writeln!(
                events,
                "{}",
                json!({"seq": r.seq, "recorded_us": r.recorded_us, "site": r.site, "batch": r.batch,
                       "hash_version": r.hash_version, "prev_hash": r.prev_hash, "hash": r.hash,
                       "entities": audit_entities_of(&mine), "body": r.body})
            )?;
            n_audit += 1;
            last_audit = r.seq;
            head = Some((r.seq, r.hash.clone()));
        }
    }
    events.flush()?;
    if let (Some(c), Some(k)) = (&a.checkpoint, &a.checkpoint_key) {
        std::fs::copy(c, dir.join("audit/checkpoint.json"))
            .with_context(|| format!("cannot read {}", c.display()))?;
        std::fs::copy(k, dir.join("audit/checkpoint-key.pub"))
            .with_context(|| format!("cannot read {}", k.display()))?;
    }

    for (name, text) in trialbridge_study::FILES {
        put(dir, &format!("study/{name}"), text.as_bytes())?;
    }
    let definitions = definitions_for(&types)?;
    for d in &definitions {
        let name = match d["resourceType"].as_str() {
            Some("StructureDefinition") => {
                format!("StructureDefinition-{}", d["id"].as_str().unwrap_or(""))
            }
            Some(t) => format!("{t}-{}", d["id"].as_str().unwrap_or("")),
            None => continue,
        };
        put(
            dir,
            &format!("definitions/{name}.json"),
            (serde_json::to_string_pretty(d)? + "\n").as_bytes(),
        )?;
    }
    let created =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let meta = json!({
        "format": FORMAT,
        "created": created,
        "writtenBy": format!("trialbridge {}", env!("CARGO_PKG_VERSION")),
        "fhirVersion": "4.0.1",
        "study": "MesemCart",
        "changeSequence": as_of,
        "versions": n_versions,
        "resources": live,
        "resourceTypes": types,
        "auditEvents": n_audit,
        "auditHead": head.as_ref().map(|(s, h)| json!({"seq": s, "hash": h})),
        "checkpoint": a.checkpoint.is_some(),
    });
    put(
        dir,
        "archive.json",
        (serde_json::to_string_pretty(&meta)? + "\n").as_bytes(),
    )?;
    put(dir, "README.txt", readme(&meta).as_bytes())?;

    // The manifest lists every other file; its signature and the public key close it.
    let manifest = manifest_of(dir)?;
    put(dir, "manifest.sha256", manifest.as_bytes())?;
    put(dir, "manifest.sig", key.sign(manifest.as_bytes()).as_ref())?;
    let public = key.public_key().as_ref().to_vec();
    put(dir, "signing-key.pem", public_pem(&public).as_bytes())?;
    let report = verify(dir, None)?;
    anyhow::ensure!(
        report.problems.is_empty(),
        "the archive written does not verify: {}",
        report.problems.join("; ")
    );
    Ok(
        json!({"archive": dir.display().to_string(), "versions": n_versions, "resources": live,
              "audit_events": n_audit, "definitions": definitions.len(),
              "key_fingerprint_sha256": fingerprint(&public)}),
    )
}

/// Every file under `dir` but the unlisted three, as `sha256sum` writes them (sorted paths).
fn manifest_of(dir: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    for rel in files(dir)? {
        if UNLISTED.contains(&rel.as_str()) {
            continue;
        }
        out.push_str(&format!(
            "{}  {rel}\n",
            sha256_hex(&std::fs::read(dir.join(&rel))?)
        ));
    }
    Ok(out)
}

/// Paths of every file under `dir`, relative, `/`-separated, sorted.
fn files(dir: &Path) -> anyhow::Result<Vec<String>> {
    fn walk(root: &Path, at: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        for e in std::fs::read_dir(at)? {
            let p = e?.path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p.strip_prefix(root)?;
                out.push(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// What `archive verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    files: usize,
    versions: u64,
    audit_events: u64,
    fingerprint: String,
    /// Each problem, in the order found.
    pub problems: Vec<String>,
}

impl VerifyReport {
    fn summary(&self) -> Value {
        json!({"files": self.files, "versions": self.versions, "audit_events": self.audit_events,
               "key_fingerprint_sha256": self.fingerprint, "problems": self.problems.len()})
    }
}

/// Checks an archive; every problem is named (nothing stops at the first).
pub fn verify(dir: &Path, want_fingerprint: Option<&str>) -> anyhow::Result<VerifyReport> {
    let mut r = VerifyReport::default();
    let manifest = std::fs::read_to_string(dir.join("manifest.sha256"))
        .with_context(|| format!("{} has no manifest.sha256: not an archive", dir.display()))?;
    // 1. The manifest is the one the key signed.
    match std::fs::read_to_string(dir.join("signing-key.pem"))
        .context("signing-key.pem is missing")
        .and_then(|pem| public_from_pem(&pem))
    {
        Ok(public) => {
            r.fingerprint = fingerprint(&public);
            let sig = std::fs::read(dir.join("manifest.sig")).unwrap_or_default();
            if UnparsedPublicKey::new(&ED25519, &public)
                .verify(manifest.as_bytes(), &sig)
                .is_err()
            {
                r.problems.push(
                    "manifest.sig: the manifest is not the one signed with signing-key.pem".into(),
                );
            }
            if let Some(want) = want_fingerprint {
                if !want.eq_ignore_ascii_case(&r.fingerprint) {
                    r.problems.push(format!(
                        "signing-key.pem has fingerprint {}, not the recorded {want}",
                        r.fingerprint
                    ));
                }
            }
        }
        Err(e) => r.problems.push(e.to_string()),
    }
    // 2. Every file as the manifest lists it, and nothing else.
    let mut listed = BTreeSet::new();
    for (n, line) in manifest.lines().enumerate() {
        let Some((hash, rel)) = line.split_once("  ") else {
            r.problems
                .push(format!("manifest.sha256 line {}: not `hash  path`", n + 1));
            continue;
        };
        listed.insert(rel.to_string());
        match std::fs::read(dir.join(rel)) {
            Ok(bytes) if sha256_hex(&bytes) == hash => {}
            Ok(_) => r
                .problems
                .push(format!("{rel}: its SHA-256 differs from the manifest's")),
            Err(_) => r
                .problems
                .push(format!("{rel}: listed in the manifest, missing")),
        }
    }
    for rel in files(dir)? {
        if !listed.contains(&rel) && !UNLISTED.contains(&rel.as_str()) {
            r.problems.push(format!("{rel}: not in the manifest"));
        }
    }
    r.files = listed.len();
    // 3. The version sequence.
    if let Ok(f) = std::fs::File::open(dir.join("resources/versions.ndjson")) {
        let (mut last_seq, mut last_version) = (0i64, BTreeMap::<(String, String), i64>::new());
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let at = format!("resources/versions.ndjson line {}", n + 1);
            let Ok(v) = serde_json::from_str::<Value>(&line?) else {
                r.problems.push(format!("{at}: not JSON"));
                continue;
            };
            let seq = v["seq"].as_i64().unwrap_or(0);
            if seq <= last_seq {
                r.problems
                    .push(format!("{at}: change sequence {seq} after {last_seq}"));
            }
            last_seq = seq;
            let key = (
                v["resourceType"].as_str().unwrap_or("").to_string(),
                v["id"].as_str().unwrap_or("").to_string(),
            );
            let version = v["versionId"].as_i64().unwrap_or(0);
            let before = last_version.insert(key.clone(), version).unwrap_or(0);
            if version != before + 1 {
                r.problems.push(format!(
                    "{at}: {}/{} version {version} follows version {before}",
                    key.0, key.1
                ));
            }
            if !v["resource"].is_null()
                && v["resource"]["meta"]["versionId"].as_str() != Some(&version.to_string())
            {
                r.problems.push(format!(
                    "{at}: the resource's meta.versionId is not {version}"
                ));
            }
            r.versions += 1;
        }
    } else {
        r.problems
            .push("resources/versions.ndjson is missing".into());
    }
    // 4. The audit chain, hash by hash, and the signed checkpoint.
    check_chain(dir, &mut r)?;
    Ok(r)
}

fn check_chain(dir: &Path, r: &mut VerifyReport) -> anyhow::Result<()> {
    let Ok(f) = std::fs::File::open(dir.join("audit/events.ndjson")) else {
        r.problems.push("audit/events.ndjson is missing".into());
        return Ok(());
    };
    let checkpoint: Option<crate::audit::Checkpoint> =
        std::fs::read_to_string(dir.join("audit/checkpoint.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
    let (mut last_seq, mut last_hash) = (0i64, AUDIT_GENESIS.to_string());
    let mut at_checkpoint = None;
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let at = format!("audit/events.ndjson line {}", n + 1);
        let Ok(e) = serde_json::from_str::<Value>(&line?) else {
            r.problems.push(format!("{at}: not JSON"));
            continue;
        };
        let seq = e["seq"].as_i64().unwrap_or(0);
        let (prev, hash) = (
            e["prev_hash"].as_str().unwrap_or(""),
            e["hash"].as_str().unwrap_or(""),
        );
        if seq != last_seq + 1 {
            r.problems
                .push(format!("{at}: event {seq} follows event {last_seq}"));
        } else if prev != last_hash {
            r.problems.push(format!(
                "{at}: event {seq} does not follow the previous event's hash"
            ));
        }
        let body = e["body"].as_str().unwrap_or("");
        let computed = if e["hash_version"].as_i64() == Some(1) {
            audit_hash(prev, seq, body)
        } else {
            let entities: Vec<String> = e["entities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            audit_hash_v2(&AuditRow {
                prev_hash: prev,
                seq,
                recorded_us: e["recorded_us"].as_i64().unwrap_or(0),
                site: e["site"].as_str(),
                batch: e["batch"].as_bool().unwrap_or(false),
                body,
                entities: &entities,
            })
        };
        if computed != hash {
            r.problems.push(format!(
                "{at}: event {seq} does not match its hash (a field was changed)"
            ));
        }
        if checkpoint.as_ref().is_some_and(|c| c.sequence == seq) {
            at_checkpoint = Some(hash.to_string());
        }
        last_seq = seq;
        last_hash = hash.to_string();
        r.audit_events += 1;
    }
    if let Some(c) = checkpoint {
        let public = std::fs::read_to_string(dir.join("audit/checkpoint-key.pub"))
            .ok()
            .and_then(|t| b64().decode(t.trim()).ok())
            .unwrap_or_default();
        // The signature check of `audit verify --checkpoint`, on the archive's copy.
        if c.check_signature(&public).is_err() {
            r.problems.push(
                "audit/checkpoint.json: its signature does not verify with audit/checkpoint-key.pub"
                    .into(),
            );
        }
        match at_checkpoint {
            Some(h) if h == c.hash => {}
            Some(_) => r
                .problems
                .push("audit: the chain differs from the signed checkpoint (rewritten)".into()),
            None => r
                .problems
                .push("audit: the chain does not reach the signed checkpoint (cut)".into()),
        }
    }
    Ok(())
}

/// Loads an archive into an empty store: every version with its sequence, version and time,
/// and every audit event with its hash, then the search index (as `reindex` builds it), then
/// one audit event of its own recording the restore, so the chain continues verifiably.
/// Returns (versions, audit events).
async fn restore(store: &dyn ResourceStore, dir: &Path) -> anyhow::Result<(u64, u64)> {
    let report = verify(dir, None)?;
    anyhow::ensure!(
        report.problems.is_empty(),
        "the archive does not verify ({}); nothing was restored",
        report.problems.join("; ")
    );
    let ctx = AccessContext::system("trialbridge archive restore");
    let empty = store.last_seq(&ctx).await? == 0
        && store
            .audit_search(
                &ctx,
                &AuditQuery {
                    count: 1,
                    ..Default::default()
                },
            )
            .await?
            .is_empty();
    anyhow::ensure!(
        empty,
        "the store is not empty: an archive is restored into an empty store (a new database)"
    );
    let lines = |rel: &str| -> anyhow::Result<Vec<Value>> {
        let f = std::fs::File::open(dir.join(rel))?;
        std::io::BufReader::new(f)
            .lines()
            .map(|l| Ok(serde_json::from_str(&l?)?))
            .collect()
    };
    let versions: Vec<trialbridge_storage::StoredVersion> = {
        let f = std::fs::File::open(dir.join("resources/versions.ndjson"))?;
        std::io::BufReader::new(f)
            .lines()
            .map(|l| {
                let v: VersionLine = serde_json::from_str(&l?)?;
                Ok(trialbridge_storage::StoredVersion {
                    last_updated_us: trialbridge_fhir::instant::parse(&v.last_updated)
                        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
                        .context("lastUpdated is not an instant")?,
                    resource_type: v.resource_type,
                    id: v.id,
                    version: v.version_id,
                    seq: v.seq,
                    last_updated: v.last_updated,
                    deleted: v.deleted,
                    body: v.resource.map(|r| r.get().to_string()),
                    site: v.site,
                    traceparent: None,
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let events: Vec<(trialbridge_storage::StoredAudit, Vec<String>)> =
        lines("audit/events.ndjson")?
            .into_iter()
            .map(|e| {
                let entities = e["entities"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect();
                Ok((
                    trialbridge_storage::StoredAudit {
                        seq: e["seq"].as_i64().context("seq")?,
                        recorded_us: e["recorded_us"].as_i64().context("recorded_us")?,
                        site: e["site"].as_str().map(String::from),
                        batch: e["batch"].as_bool().unwrap_or(false),
                        body: e["body"].as_str().context("body")?.to_string(),
                        prev_hash: e["prev_hash"].as_str().context("prev_hash")?.to_string(),
                        hash: e["hash"].as_str().context("hash")?.to_string(),
                        hash_version: e["hash_version"].as_i64().unwrap_or(2),
                    },
                    entities,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
    let (n_versions, n_events) = (versions.len() as u64, events.len() as u64);
    // The audit chain first (each job is its own transaction), then the versions; each
    // version exists in the archive's chain already, so no job writes an unaudited change.
    for chunk in events.chunks(2000) {
        let chunk = chunk.to_vec();
        trialbridge_storage::write(store, &ctx, move |txn| {
            Box::pin(async move {
                for (a, entities) in &chunk {
                    txn.restore_audit(a, entities).await?;
                }
                Ok::<_, trialbridge_storage::StorageError>(())
            })
        })
        .await?;
    }
    for chunk in versions.chunks(1000) {
        let chunk = chunk.to_vec();
        trialbridge_storage::write(store, &ctx, move |txn| {
            Box::pin(async move {
                for v in &chunk {
                    txn.restore_version(v).await?;
                }
                Ok::<_, trialbridge_storage::StorageError>(())
            })
        })
        .await?;
    }
    trial_store::fhir::loading::reindex(store, |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("rebuilding the search index: {:?}", e.outcome().issues))?;
    // The restore itself, on the chain it continues.
    let caller = trial_store::security::Caller::system(&format!(
        "trialbridge archive restore {}",
        dir.display()
    ));
    let record = trial_store::security::audit::change_event(&caller, "create", 200, &[]);
    trialbridge_storage::write(store, &ctx, move |txn| {
        Box::pin(async move { txn.audit(record).await })
    })
    .await?;
    Ok((n_versions, n_events))
}

/// The README inside the package: the layout and how to check it with standard tools.
fn readme(meta: &Value) -> String {
    format!(
        r#"MesemCart trial records: an archive written by {written} on {created}
=============================================================================

This directory holds the records of the MesemCart trial (allogeneic umbilical-cord MSC with a
collagen carrier for focal knee cartilage defects) as they stood at change sequence
{seq}: {versions} versions of {resources} FHIR R4 (4.0.1) resources and {audit} audit events.
Everything is UTF-8 text (JSON); nothing is compressed or encrypted. No program of the writer
is needed to read or check it: the commands below use sha256sum, openssl (3.0 or later) and
jq.

Layout
------
archive.json                 what the archive holds (counts, change sequence, audit head)
resources/versions.ndjson    every version of every resource, one JSON object a line, in
                             change-sequence order: seq, resourceType, id, versionId,
                             lastUpdated, deleted, site (the site study it belongs to), and
                             resource (the FHIR resource as stored; null for a deletion).
                             The current state of a resource is its last line.
audit/events.ndjson          the audit trail, one event a line in chain order: seq,
                             recorded_us (microseconds since 1970-01-01 UTC), site, batch,
                             hash_version, prev_hash, hash, entities, and body (the FHIR
                             AuditEvent, or a batch of them, as JSON text).
audit/checkpoint.json        (when present) a signed chain head: sequence, hash, signed_at,
audit/checkpoint-key.pub     public_key, signature; the key's 32 bytes in base64.
study/                       the study definition: ResearchStudy (the study and its sites),
                             PlanDefinitions (protocol and visit schedule), CodeSystems,
                             ValueSets, ConceptMaps, the eligibility Group.
definitions/                 the official FHIR R4 StructureDefinitions of the resource types
                             the data holds and of every datatype, and the ValueSets and
                             CodeSystems they bind: what every element means.
manifest.sha256              the SHA-256 of every file above (sha256sum format)
manifest.sig                 an Ed25519 signature of manifest.sha256
signing-key.pem              the public key of that signature; compare its fingerprint with
                             the one recorded when the archive was written.

Checking it
-----------
Run these in this directory. Each prints nothing alarming when the archive is intact.

1. Every file is the one listed (each line must say OK):

     sha256sum -c manifest.sha256

2. The list is the one signed (prints "Signature Verified Successfully"):

     openssl pkeyutl -verify -pubin -inkey signing-key.pem -rawin \
         -in manifest.sha256 -sigfile manifest.sig

3. The signing key is the recorded one (compare with the record):

     openssl pkey -pubin -in signing-key.pem -outform DER | sha256sum

4. The audit chain: each event names the hash of the one before it (prints nothing):

     jq -r '[.seq, .prev_hash, .hash] | @tsv' audit/events.ndjson |
         awk -F'\t' 'NR == 1 && $2 != "{genesis}" {{ print "event " $1 ": bad start" }}
                     NR > 1 && $2 != prev {{ print "event " $1 ": broken link" }}
                     {{ prev = $3 }}'

5. Each event's hash is the SHA-256 of its fields (hash_version 2), each written as
   NAME:LENGTH:VALUE and a newline, LENGTH in bytes: v (2), prev (prev_hash), seq,
   recorded_us, site ("" when null), site_null (1 when null, else 0), batch (1 or 0),
   body, then one "entity" line per entry of entities. This recomputes them all and
   prints the sequence of every event whose hash differs (nothing when all match):

     jq -j 'select(.hash_version == 2) |
         def f($n; $v): "\($n):\($v | tostring | utf8bytelength):\($v | tostring)\n";
         "\(.seq)\t\(.hash)\t" + f("v"; "2") + f("prev"; .prev_hash) + f("seq"; .seq)
         + f("recorded_us"; .recorded_us) + f("site"; .site // "")
         + f("site_null"; if .site == null then "1" else "0" end)
         + f("batch"; if .batch then "1" else "0" end) + f("body"; .body)
         + ([.entities[] | f("entity"; .)] | join("")) + "\u0000"' audit/events.ndjson |
     while IFS= read -r -d '' record; do
         seq=${{record%%$'\t'*}}; rest=${{record#*$'\t'}}
         want=${{rest%%$'\t'*}}; fields=${{rest#*$'\t'}}
         got=$(printf '%s' "$fields" | sha256sum | cut -c1-64)
         [ "$got" = "$want" ] || echo "event $seq: hash differs"
     done

   (Events with hash_version 1, written by early versions, hash prev_hash, seq and body,
   each followed by a newline.)

6. When audit/checkpoint.json is present: its signature covers the four lines
   "trialbridge audit checkpoint v1", sequence, hash, signed_at (each ending in a newline),
   made with the key in audit/checkpoint-key.pub (32 bytes, base64); this prints "Signature
   Verified Successfully", then the hash of the event of that sequence, which must be the
   checkpoint's hash:

     c=audit/checkpoint.json; t=$(mktemp -d)
     printf 'trialbridge audit checkpoint v1\n%s\n%s\n%s\n' "$(jq .sequence $c)" \
         "$(jq -r .hash $c)" "$(jq -r .signed_at $c)" > $t/message
     jq -r .signature $c | base64 -d > $t/signature
     {{ printf '\060\052\060\005\006\003\053\145\160\003\041\000'; base64 -d audit/checkpoint-key.pub; }} |
         openssl pkey -pubin -inform DER -out $t/key.pem
     openssl pkeyutl -verify -pubin -inkey $t/key.pem -rawin -in $t/message -sigfile $t/signature
     jq -r --argjson s "$(jq .sequence $c)" 'select(.seq == $s) | .hash' audit/events.ndjson
     jq -r .hash $c

Reading it
----------
The current value of, for example, every Observation:

     jq -c 'select(.resourceType == "Observation")' resources/versions.ndjson |
         jq -s 'group_by(.id) | map(last) | map(select(.deleted | not) | .resource)'

Every version of one resource, with when it was written:

     jq -c 'select(.resourceType == "Observation" and .id == "ID") |
         [.versionId, .lastUpdated, .resource]' resources/versions.ndjson

Who did what to it (the audit events naming it):

     jq -r 'select(.entities | index("Observation/ID")) | .body' audit/events.ndjson
"#,
        written = meta["writtenBy"].as_str().unwrap_or("trialbridge"),
        created = meta["created"].as_str().unwrap_or(""),
        seq = meta["changeSequence"],
        versions = meta["versions"],
        resources = meta["resources"],
        audit = meta["auditEvents"],
        genesis = AUDIT_GENESIS,
    )
}
