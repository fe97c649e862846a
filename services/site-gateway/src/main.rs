//! `site-gateway`: the gateway on its own (a hospital deployment), forwarding to the trial
//! store at `TRIALBRIDGE_STORE_URL`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "site-gateway",
    about = "HL7 v2 / MLLP in, pseudonymised trial FHIR out"
)]
struct Cli {
    #[command(flatten)]
    gateway: site_gateway::GatewayArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = trialbridge_telemetry::init("site-gateway", "info");
    let cli = Cli::parse();
    let config = site_gateway::GatewayConfig::from_args(
        &cli.gateway,
        "http://127.0.0.1:8080/fhir",
        "data/site-gateway.db".into(),
    )
    .map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    site_gateway::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
