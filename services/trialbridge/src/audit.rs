//! `trialbridge audit verify`: walks the audit trail's hash chain and names the first event
//! that does not match (an edited, removed or inserted row).

use trialbridge_storage::{audit_hash, AccessContext, AuditQuery, AUDIT_GENESIS};

/// Audit-trail commands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Recomputes the hash chain of every audit event; exit code 1 names the first broken one.
    Verify,
}

/// What a walk of the chain found.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainCheck {
    /// Every row of the chain (a change's event, or a batch of queued events) matches; the
    /// count and the last hash.
    Intact(u64, String),
    /// The first event that does not match, and why.
    Broken(String),
}

/// Walks the chain of the database at `url`.
pub async fn check(url: &str) -> anyhow::Result<ChainCheck> {
    let store = trialbridge_storage::open(url).await?;
    let ctx = AccessContext::system("trialbridge audit verify");
    let mut last_seq = 0;
    let mut last_hash = AUDIT_GENESIS.to_string();
    let mut n = 0u64;
    loop {
        let page = store
            .audit_search(
                &ctx,
                &AuditQuery {
                    after_seq: Some(last_seq),
                    count: 5000,
                    ..Default::default()
                },
            )
            .await?;
        if page.is_empty() {
            return Ok(ChainCheck::Intact(n, last_hash));
        }
        for a in page {
            let name = format!(
                "event {} (AuditEvent/{}{})",
                a.seq,
                a.seq,
                if a.batch { ".N, a batch" } else { "" }
            );
            if a.seq != last_seq + 1 {
                return Ok(ChainCheck::Broken(format!(
                    "{name}: events {} to {} are missing",
                    last_seq + 1,
                    a.seq - 1
                )));
            }
            if a.prev_hash != last_hash {
                return Ok(ChainCheck::Broken(format!(
                    "{name}: it does not follow the previous event's hash"
                )));
            }
            if audit_hash(&a.prev_hash, a.seq, &a.body) != a.hash {
                return Ok(ChainCheck::Broken(format!(
                    "{name}: its content does not match its hash (edited)"
                )));
            }
            last_seq = a.seq;
            last_hash = a.hash;
            n += 1;
        }
    }
}

/// Runs a command.
pub async fn run(c: AuditCommand, url: &str) -> anyhow::Result<()> {
    match c {
        AuditCommand::Verify => match check(url).await? {
            ChainCheck::Intact(n, hash) => {
                println!("audit trail intact: {n} chain rows, last hash {hash}");
                Ok(())
            }
            ChainCheck::Broken(why) => anyhow::bail!("audit trail broken at {why}"),
        },
    }
}
