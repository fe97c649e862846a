//! `trialbridge feed`: follows the trial store's gRPC change feed and prints one JSON line per
//! committed version (the warehouse's tool to look at the feed, and its catch-up benchmark).

use std::io::Write;

use trialbridge_feed::change_feed_client::ChangeFeedClient;
use trialbridge_feed::SubscribeRequest;

/// Flags of `feed`.
#[derive(Debug, clap::Args)]
pub struct FeedArgs {
    /// The store's change-feed address (default: the one `TRIALBRIDGE_GRPC_LISTEN` names).
    #[arg(long)]
    pub from: Option<String>,
    /// Start after this sequence number (0: from the beginning).
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// Only these resource types, comma-separated.
    #[arg(long = "type")]
    pub types: Option<String>,
    /// Keep following new commits instead of stopping once caught up.
    #[arg(long)]
    pub follow: bool,
    /// Print the resources' JSON too, not only what changed.
    #[arg(long)]
    pub resources: bool,
    /// Bearer token (a `warehouse` token).
    #[arg(long, env = "TRIALBRIDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Streams the feed to stdout; a summary line (events, last sequence, rate) goes to stderr.
pub async fn run(a: FeedArgs) -> anyhow::Result<()> {
    let mut client = ChangeFeedClient::connect(a.from.clone().unwrap_or_default())
        .await?
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut req = tonic::Request::new(SubscribeRequest {
        after_sequence: a.after,
        resource_types: a
            .types
            .as_deref()
            .map(|t| t.split(',').map(|x| x.trim().to_string()).collect())
            .unwrap_or_default(),
        follow: a.follow,
    });
    if let Some(t) = &a.token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    let start = std::time::Instant::now();
    let mut stream = client.subscribe(req).await?.into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut n, mut last) = (0u64, a.after);
    while let Some(e) = stream.message().await? {
        let mut line = serde_json::json!({
            "sequence": e.sequence, "resourceType": e.resource_type, "id": e.id,
            "version": e.version, "operation": e.operation().as_str_name(),
            "site": e.site, "lastUpdated": e.last_updated,
        });
        if a.resources && !e.resource_json.is_empty() {
            line["resource"] = serde_json::from_str(&e.resource_json)?;
        }
        writeln!(out, "{line}")?;
        // Following, a line is for now (a pipe to `jq`, a monitor's terminal): out it goes.
        // Catching up without --follow, the buffer writes in large blocks.
        if a.follow {
            out.flush()?;
        }
        n += 1;
        last = e.sequence;
    }
    out.flush()?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{}",
        serde_json::json!({"events": n, "last_sequence": last, "seconds": (secs * 100.0).round() / 100.0,
                           "events_per_s": (n as f64 / secs.max(1e-9)).round()})
    );
    Ok(())
}
