//! The all-in-one trialbridge binary and CLI.
//!
//! `trialbridge` (or `trialbridge serve`) starts every service in one process on an embedded
//! SQLite database with the MesemCart study loaded; `load` imports FHIR files; `validate` checks
//! files as the store would; `bench` drives a FHIR server with the benchmark workloads. The integration tests run this same entry point.

mod archive;
mod audit;
mod bench;
mod export;
mod feed;
mod hl7;
mod load;
mod serve;
mod sync;
mod token;
mod validate;
mod view;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use trial_store::ServeArgs;

/// trialbridge: clinical data between hospital EHRs and the MesemCart trial database, as FHIR R4.
#[derive(Debug, Parser)]
#[command(name = "trialbridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    gateway: site_gateway::GatewayArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the trial store and the site gateway (the default when no command is given).
    Serve,
    /// Serve the trial store alone (a sponsor deployment, one of several replicas).
    Store,
    /// Serve the site gateway alone (a hospital deployment), forwarding to
    /// TRIALBRIDGE_STORE_URL.
    Gateway,
    /// Load FHIR resources from a JSON file, an NDJSON file or a directory of them.
    Load(load::LoadArgs),
    /// Rebuild the search index of every resource (after search-parameter definitions changed).
    Reindex,
    /// Disk space the store's database takes, per table and index, and per current resource.
    Space,
    /// Drive a FHIR server with a benchmark workload and print one JSON line of figures.
    Bench(bench::BenchArgs),
    /// Validate FHIR JSON or NDJSON files as the store would, without a server.
    Validate(validate::ValidateArgs),
    /// Bulk export from a trial store into a folder of NDJSON files (the warehouse's first load).
    Export(export::ExportArgs),
    /// Keep the warehouse's PostgreSQL tables current from the change feed.
    Sync(sync::SyncArgs),
    /// Follow the trial store's gRPC change feed, one JSON line per committed version.
    Feed(feed::FeedArgs),
    /// HL7 v2 tools: parse message files, send messages over MLLP.
    #[command(subcommand)]
    Hl7(hl7::Hl7Command),
    /// Mint a bearer token with the local profile's development key (printed alone on stdout).
    Token(token::TokenArgs),
    /// The audit trail: `verify` checks its hash chain.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The trial's records as a self-describing, signed archive (`archive --to DIR`), and
    /// `archive verify DIR` / `archive restore DIR`.
    Archive(archive::ArchiveArgs),
    /// SQL on FHIR v2 views: `run` prints a ViewDefinition's rows over files or a store.
    #[command(subcommand)]
    View(view::ViewCommand),
}

/// Runs the CLI with these arguments and returns the process exit code.
pub async fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Logs and traces; dropped (spans flushed) when the command returns.
    let service = match &cli.command {
        Some(Command::Store) => "trial-store",
        Some(Command::Gateway) => "site-gateway",
        Some(Command::Sync(_)) => "warehouse-sync",
        _ => "trialbridge",
    };
    let _telemetry = trialbridge_telemetry::init(service, "warn");
    let result = match cli.command {
        None | Some(Command::Serve) => return serve::run(cli.serve, cli.gateway).await,
        Some(Command::Store) => return trial_store::serve_command(cli.serve).await,
        Some(Command::Gateway) => return serve::gateway_only(cli.serve, cli.gateway).await,
        Some(Command::Load(a)) => {
            let validation = cli.serve.validation();
            load::run(a, &cli.serve.database(), &validation).await
        }
        Some(Command::Bench(a)) => bench::run(a).await,
        Some(Command::Hl7(c)) => hl7::run(c).await,
        Some(Command::Export(mut a)) => {
            a.from.get_or_insert_with(|| own_fhir_base(&cli.serve));
            export::run(a).await
        }
        Some(Command::Feed(mut a)) => {
            a.from.get_or_insert_with(|| own_feed(&cli.serve));
            feed::run(a).await
        }
        Some(Command::Sync(mut a)) => {
            a.from.get_or_insert_with(|| own_feed(&cli.serve));
            sync::run(a).await
        }
        Some(Command::Validate(a)) => validate::run(a, &cli.serve.validation()),
        Some(Command::Reindex) => match existing(&cli.serve.database()) {
            Ok(()) => reindex(&cli.serve.database()).await,
            Err(e) => Err(e),
        },
        Some(Command::Space) => match existing(&cli.serve.database()) {
            Ok(()) => space(&cli.serve.database()).await,
            Err(e) => Err(e),
        },
        Some(Command::Token(a)) => token::run(a, &cli.serve),
        Some(Command::Audit(c)) => match existing(&cli.serve.database()) {
            Ok(()) => audit::run(c, &cli.serve.database()).await,
            Err(e) => Err(e),
        },
        Some(Command::View(c)) => view::run(c).await,
        Some(Command::Archive(a)) => {
            let check = if a.reads_store() {
                existing(&cli.serve.database())
            } else {
                Ok(())
            };
            match check {
                Ok(()) => archive::run(a, &cli.serve.database()).await,
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trialbridge: {e:#}");
            if let Some(h) = next_step(&format!("{e:#}")) {
                eprintln!("trialbridge: {h}");
            }
            ExitCode::from(1)
        }
    }
}

/// A command that reads the trial database refuses to create an empty one where none is (it
/// would then report on nothing as if all were well).
fn existing(database_url: &str) -> anyhow::Result<()> {
    if let Some(path) = database_url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        anyhow::ensure!(
            path.starts_with(':') || std::path::Path::new(path).exists(),
            "no trial database at {path}: name it with --database-url (TRIALBRIDGE_DATABASE_URL) or its directory with --data-dir (TRIALBRIDGE_DATA_DIR)"
        );
    }
    Ok(())
}

/// What to do next after the usual failures a new user meets.
fn next_step(error: &str) -> Option<&'static str> {
    if error.contains("Connection refused") || error.contains("tcp connect error") {
        Some("nothing answers at that address: start the server (`cargo run --release`), or name where it runs with --from / --to")
    } else if error.contains("relative URL without a base") || error.contains("invalid port") {
        Some("a PostgreSQL URL looks like postgres://user:password@host:5432/database")
    } else if error.contains("401")
        || error.contains("Unauthorized")
        || error.contains("unauthenticated")
    {
        Some("the server wants a bearer token: mint one with `trialbridge token --role ...` and pass it with --token (or TRIALBRIDGE_TOKEN)")
    } else {
        None
    }
}

async fn reindex(database_url: &str) -> anyhow::Result<()> {
    let store = trialbridge_storage::open(database_url).await?;
    let bar = indicatif::ProgressBar::new_spinner();
    let n = trial_store::fhir::loading::reindex(&*store, |n| {
        bar.set_message(format!("{n} resources re-indexed"))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{:?}", e.outcome().issues))?;
    bar.finish_and_clear();
    println!("re-indexed {n} resources");
    Ok(())
}

async fn space(database_url: &str) -> anyhow::Result<()> {
    let store = trialbridge_storage::open(database_url).await?;
    let space = store.space(true).await?;
    let listed: u64 = space.parts.iter().map(|p| p.bytes).sum();
    for p in &space.parts {
        println!(
            "{:<36} {:>14} bytes {:>5.1}%",
            p.name,
            p.bytes,
            100.0 * p.bytes as f64 / listed.max(1) as f64
        );
    }
    println!(
        "{:<36} {:>14} bytes, {} per current resource ({} resources)",
        "database",
        space.total,
        space.total / space.resources.max(1),
        space.resources
    );
    Ok(())
}

/// A client's address for a listen address (`0.0.0.0:8080` is reached on `127.0.0.1:8080`).
fn reachable(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "", port)) => format!("127.0.0.1:{port}"),
        _ => listen.to_string(),
    }
}

/// The FHIR base URL the server's own variables name (`TRIALBRIDGE_BASE_URL`, else
/// `TRIALBRIDGE_LISTEN`): what `export` reads when `--from` is not given.
fn own_fhir_base(serve: &trial_store::ServeArgs) -> String {
    serve
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/fhir", reachable(&serve.listen)))
}

/// The change-feed address the server's own `TRIALBRIDGE_GRPC_LISTEN` names.
fn own_feed(serve: &trial_store::ServeArgs) -> String {
    format!("http://{}", reachable(&serve.grpc_listen))
}

#[cfg(test)]
mod address_tests {
    use super::reachable;

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        assert_eq!(reachable("0.0.0.0:8082"), "127.0.0.1:8082");
        assert_eq!(reachable("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(reachable("[::]:8080"), "127.0.0.1:8080");
    }
}
