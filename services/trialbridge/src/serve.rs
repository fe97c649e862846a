//! `trialbridge serve`: the trial store and the site gateway in one process (the first of the
//! README's two commands). The gateway forwards to this process's store over its HTTP API,
//! exactly as a hospital deployment forwards over the network.

use std::process::ExitCode;

use site_gateway::{Gateway, GatewayArgs, GatewayConfig};
use trial_store::{ServeArgs, ServeConfig};

/// Starts both services; stops both on Ctrl-C or SIGTERM.
pub async fn run(store_args: ServeArgs, gateway_args: GatewayArgs) -> ExitCode {
    let store_config = ServeConfig::from_args(store_args);
    let gateway_check = GatewayConfig::check_args(&gateway_args);
    let mut problems = Vec::new();
    if let Err(p) = &store_config {
        problems.extend(p.iter().cloned());
    }
    if let Err(p) = &gateway_check {
        problems.extend(p.iter().cloned());
    }
    let Ok(store_config) = store_config else {
        return report(problems);
    };
    if !problems.is_empty() {
        return report(problems);
    }
    let bound = match trial_store::bind(&store_config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("trialbridge: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(n) = bound.study {
        eprintln!(
            "trialbridge: MesemCart study loaded ({} created, {} updated, {} unchanged)",
            n.created, n.updated, n.unchanged
        );
    }
    let base = bound.state.config.base_url.clone();
    let gateway_args = in_data_dir(gateway_args, &store_config.data_dir);
    let mut gateway_config = match GatewayConfig::from_args(
        &gateway_args,
        &base,
        // The gateway's database in the store's data directory (`data/site-gateway.db`).
        store_config.data_dir.join("site-gateway.db"),
        // The gateway's API takes the tokens the store takes.
        bound.state.auth.clone(),
    ) {
        Ok(c) => c,
        Err(p) => return report(p),
    };
    // Site staff sign in to the gateway's console where people sign in to the store's pages
    // (in the local profile: the store's development issuer).
    let smart = &bound.state.config.smart;
    if let (Some(authorize), Some(token)) = (&smart.authorize, &smart.token) {
        gateway_config.api.sign_in = Some(site_gateway::SignIn {
            authorize: authorize.clone(),
            token: token.clone(),
        });
    }
    // In the local profile the gateway signs its own site token with the development key.
    if let (trial_store::AuthSource::LocalKey(dir), site_gateway::StoreToken::None) =
        (&store_config.auth, &gateway_config.store_token)
    {
        match trialbridge_auth::DevIssuer::load_or_create(
            dir,
            &store_config.auth_issuer,
            &store_config.auth_audience,
        ) {
            Ok(issuer) => {
                let request = trialbridge_auth::TokenRequest {
                    subject: format!("site-gateway-{}", gateway_config.site),
                    role: trialbridge_storage::Role::Site,
                    sites: vec![gateway_config.site_study()],
                    scope: "system/*.cruds".into(),
                    lifetime_seconds: 300,
                };
                gateway_config.store_token =
                    site_gateway::StoreToken::Minted(std::sync::Arc::new(move || {
                        issuer.mint(&request)
                    }));
            }
            Err(e) => {
                eprintln!("trialbridge: the development signing key: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let gateway = match Gateway::open(gateway_config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("trialbridge: {e}");
            return ExitCode::from(1);
        }
    };
    let (mllp, api) = match (
        tokio::net::TcpListener::bind(gateway.config.mllp_listen).await,
        tokio::net::TcpListener::bind(gateway.config.http_listen).await,
    ) {
        (Ok(m), Ok(a)) => (m, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "trialbridge: the site gateway cannot listen ({} MLLP, {} HTTP): {e}",
                gateway.config.mllp_listen, gateway.config.http_listen
            );
            return ExitCode::from(1);
        }
    };
    // The development issuer sends people back to the console's pages too.
    if let (Some(dev), Ok(addr)) = (&bound.state.dev_sign_in, api.local_addr()) {
        for host in gateway.config.api_hosts(addr) {
            dev.allow_pages_of(&format!("http://{host}"));
        }
    }
    println!("{base}");
    eprintln!(
        "trialbridge: trial store listening, FHIR base {base} (database {})",
        trialbridge_storage::redacted_url(&store_config.database_url)
    );
    eprintln!(
        "trialbridge: site gateway for {} listening, MLLP {} and HTTP http://{} (console http://{2}/app; database {}), forwarding to {}",
        gateway.config.site,
        mllp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        gateway.config.database.display(),
        gateway.config.store_url
    );
    trial_store::local_profile_notice(&store_config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Ok(a) = bound.feed_listener.local_addr() {
        eprintln!("trialbridge: change feed (gRPC) listening on {a}");
    }
    trial_store::spawn_feed(bound.feed_listener, bound.state.clone(), stop_rx.clone());
    let store = tokio::spawn(trial_store::serve(
        bound.listener,
        bound.state,
        stopped(stop_rx.clone()),
    ));
    let gw = tokio::spawn(site_gateway::serve(gateway, mllp, api, stopped(stop_rx)));
    trial_store::shutdown_signal().await;
    let _ = stop_tx.send(true);
    // The gateway first: its forwarder may still be sending to the store.
    let _ = gw.await;
    match store.await {
        Ok(Ok(())) => {
            eprintln!("trialbridge: stopped");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("trialbridge: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("trialbridge: {e}");
            ExitCode::from(1)
        }
    }
}

fn report(problems: Vec<String>) -> ExitCode {
    for p in &problems {
        eprintln!("trialbridge: configuration: {p}");
    }
    ExitCode::from(2)
}

/// `trialbridge gateway`: the site gateway alone, forwarding to `TRIALBRIDGE_STORE_URL` with
/// `TRIALBRIDGE_STORE_TOKEN` (a hospital deployment); its database in the data directory.
/// Stops on Ctrl-C or SIGTERM after the current outbox batch.
pub async fn gateway_only(store_args: ServeArgs, gateway_args: GatewayArgs) -> ExitCode {
    let data_dir = trial_store::config::data_dir(&store_args);
    // The API's tokens: the issuer's JWKS, or in the local profile the development key of the
    // data directory (what `trialbridge token` signs with).
    let source = match &store_args.auth.auth_jwks {
        Some(j) => trialbridge_auth::AuthSource::Jwks(j.clone()),
        None if store_args.profile == "local" => {
            trialbridge_auth::AuthSource::LocalKey(data_dir.clone())
        }
        None => return report(vec!["TRIALBRIDGE_AUTH_JWKS / --auth-jwks: the production profile needs the token issuer's JWKS (file or URL) for the gateway's API".into()]),
    };
    let tokens =
        match trialbridge_auth::Authenticator::open(&source, store_args.auth.settings()).await {
            Ok(t) => std::sync::Arc::new(t),
            Err(e) => return report(vec![e]),
        };
    let gateway_args = in_data_dir(gateway_args, &data_dir);
    let mut config = match GatewayConfig::from_args(
        &gateway_args,
        "http://127.0.0.1:8080/fhir",
        data_dir.join("site-gateway.db"),
        tokens,
    ) {
        Ok(c) => c,
        Err(p) => return report(p),
    };
    // The console signs site staff in at the issuer of the API's tokens.
    if let (Some(authorize), Some(token)) = (
        &store_args.auth.auth_authorize_url,
        &store_args.auth.auth_token_url,
    ) {
        config.api.sign_in = Some(site_gateway::SignIn {
            authorize: authorize.clone(),
            token: token.clone(),
        });
    }
    eprintln!(
        "trialbridge: site gateway for {}, MLLP {} and HTTP http://{} (database {}), forwarding to {}",
        config.site,
        config.mllp_listen,
        config.http_listen,
        config.database.display(),
        config.store_url
    );
    match site_gateway::run(config, trial_store::shutdown_signal()).await {
        Ok(()) => {
            eprintln!("trialbridge: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trialbridge: {e}");
            ExitCode::from(1)
        }
    }
}

/// A relative `TRIALBRIDGE_GATEWAY_DATABASE` is relative to the data directory, like every
/// other file the process writes.
fn in_data_dir(mut a: GatewayArgs, data_dir: &std::path::Path) -> GatewayArgs {
    if let Some(p) = &a.gateway_database {
        if p.is_relative() {
            a.gateway_database = Some(data_dir.join(p));
        }
    }
    a
}
