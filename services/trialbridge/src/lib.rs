//! The all-in-one trialbridge binary and CLI.
//!
//! `trialbridge` (or `trialbridge serve`) starts every service in one process on an embedded
//! SQLite database with the MesemCart study loaded; `load` imports FHIR files; `bench` drives a
//! FHIR server with the benchmark workloads. The integration tests run this same entry point.

mod bench;
mod config;
mod load;
mod study;

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

pub use config::{ServeArgs, ServeConfig};

/// trialbridge: clinical data between hospital EHRs and the MesemCart trial database, as FHIR R4.
#[derive(Debug, Parser)]
#[command(name = "trialbridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the trial store (the default when no command is given).
    Serve,
    /// Load FHIR resources from a JSON file, an NDJSON file or a directory of them.
    Load(load::LoadArgs),
    /// Drive a FHIR server with a benchmark workload and print one JSON line of figures.
    Bench(bench::BenchArgs),
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
    init_tracing();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve) => serve(cli.serve).await,
        Some(Command::Load(a)) => load::run(a, &cli.serve.database_url).await,
        Some(Command::Bench(a)) => bench::run(a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trialbridge: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIALBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = match ServeConfig::from_args(args) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("trialbridge: configuration: {p}");
            }
            std::process::exit(2);
        }
    };
    let store = trialbridge_storage::open(&config.database_url).await?;
    if config.load_study {
        let n = study::load(&*store).await?;
        eprintln!(
            "trialbridge: MesemCart study loaded ({} created, {} updated, {} unchanged)",
            n.created, n.updated, n.unchanged
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut api = trial_store::StoreConfig::new(
        config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}/fhir")),
    );
    api.max_body_bytes = config.max_body_bytes;
    let base = api.base_url.clone();
    let state = trial_store::StoreState {
        store,
        config: Arc::new(api),
    };
    // The base URL alone on stdout, so scripts can read it; everything else goes to stderr.
    println!("{base}");
    eprintln!(
        "trialbridge: trial store listening, FHIR base {base} (database {})",
        config.database_url
    );
    trial_store::serve(listener, state, shutdown_signal()).await?;
    eprintln!("trialbridge: stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
