//! `trialbridge token`: mints a bearer token with the local profile's development key (the
//! token alone on stdout), so that curl, fhirpy and the tests can talk to a local server.

use trialbridge_storage::Role;

/// Flags of `token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Trial role: site, monitor, warehouse, admin or system.
    #[arg(long)]
    pub role: String,
    /// Site study the token covers (`mesemcart-site-01`); repeat for a monitor's sites.
    #[arg(long = "site")]
    pub sites: Vec<String>,
    /// SMART scopes, space-separated (default: the role's usual ones).
    #[arg(long)]
    pub scope: Option<String>,
    /// `sub` of the token.
    #[arg(long)]
    pub subject: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub lifetime: i64,
}

/// Prints the token.
pub fn run(a: TokenArgs, serve: &trial_store::ServeArgs) -> anyhow::Result<()> {
    if serve.profile != "local" || serve.auth.auth_jwks.is_some() {
        anyhow::bail!("tokens of a production deployment come from its identity provider; `trialbridge token` signs with the local profile's development key only");
    }
    let role = trialbridge_auth::parse_role(&a.role).ok_or_else(|| {
        anyhow::anyhow!(
            "--role {}: not one of site, monitor, warehouse, admin, system",
            a.role
        )
    })?;
    let known = trialbridge_study::site_studies();
    for s in &a.sites {
        if !known.contains(s) {
            anyhow::bail!(
                "--site {s}: not a site study of the study (one of {})",
                known.join(", ")
            );
        }
    }
    match role {
        Role::Site if a.sites.len() != 1 => anyhow::bail!("a site token needs exactly one --site"),
        Role::Monitor if a.sites.is_empty() => {
            anyhow::bail!("a monitor token needs at least one --site")
        }
        _ => {}
    }
    let dir = trial_store::config::data_dir(serve);
    let issuer = trialbridge_auth::DevIssuer::load_or_create(
        &dir,
        &serve.auth.auth_issuer,
        &serve.auth.auth_audience,
    )?;
    let token = issuer.mint(&trialbridge_auth::TokenRequest {
        subject: a.subject.unwrap_or_else(|| format!("local-{}", a.role)),
        role,
        sites: a.sites,
        scope: a
            .scope
            .unwrap_or_else(|| trialbridge_auth::default_scopes(role).to_string()),
        lifetime_seconds: a.lifetime,
    });
    println!("{token}");
    Ok(())
}
