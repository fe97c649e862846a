//! `trial-store`: the trial store on its own (the all-in-one `trialbridge` binary runs the same
//! code as its `serve` command).

use clap::Parser;

/// The MesemCart trial store: a FHIR R4 server.
#[derive(Debug, Parser)]
#[command(name = "trial-store", version, about)]
struct Args {
    #[command(flatten)]
    serve: trial_store::ServeArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRIALBRIDGE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    trial_store::serve_command(Args::parse().serve).await
}
