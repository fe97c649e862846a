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
    #[command(flatten)]
    auth: trialbridge_auth::AuthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = trialbridge_telemetry::init("site-gateway", "info");
    let cli = Cli::parse();
    // The API's tokens come from the issuer's JWKS; without one, from the local development
    // key in the data directory (as `trialbridge token` mints them).
    let source = match &cli.auth.auth_jwks {
        Some(j) => trialbridge_auth::AuthSource::Jwks(j.clone()),
        None => trialbridge_auth::AuthSource::LocalKey("data".into()),
    };
    let tokens = trialbridge_auth::Authenticator::open(&source, cli.auth.settings())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let config = site_gateway::GatewayConfig::from_args(
        &cli.gateway,
        "http://127.0.0.1:8080/fhir",
        "data/site-gateway.db".into(),
        std::sync::Arc::new(tokens),
    )
    .map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    site_gateway::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
