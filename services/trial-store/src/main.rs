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
    let _telemetry = trialbridge_telemetry::init("trial-store", "warn");
    trial_store::serve_command(Args::parse().serve).await
}
