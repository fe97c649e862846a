//! trial-store: the MesemCart trial database as a FHIR R4 (4.0.1) server.
//!
//! The crate is a library: [`router`] builds the axum router over a [`StoreState`], and [`run`]
//! opens the database, loads the study, binds the listener and serves until shutdown. The
//! crate's own thin `main` (`trial-store`), the all-in-one `trialbridge` binary and the
//! integration tests start exactly this code.
//!
//! Layout, in four rooms that import only downwards: `rest` (the only module that knows HTTP:
//! routes, tokens, negotiation, answers) -> `trial` (protocol rules, the study definition,
//! monitoring) -> `fhir` (interactions, Bundles, search, history, `$validate`, `$export`, the
//! change feed) -> storage; `security` (callers and the audit trail) imports no sibling, and
//! `error` (the one place where failures become OperationOutcomes) and `config` sit below all.

pub mod config;
pub mod error;
pub mod fhir;
pub mod rest;
pub mod security;
pub mod trial;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{AuthSource, ServeArgs, ServeConfig, StoreConfig};
pub use error::StoreError;
pub use fhir::loading::{load_values, LoadCounts};
pub use fhir::{StoreState, WriteRules};
pub use security::Caller;
pub use trial::protocol::TrialRules;
pub use trialbridge_auth::Authenticator;

/// The router of the FHIR API (`/fhir/...`) and the health endpoints (`/livez`, `/readyz`).
pub fn router(state: StoreState) -> axum::Router {
    rest::routes(state)
}

/// Failures while starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database could not be opened.
    #[error(transparent)]
    Storage(#[from] trialbridge_storage::StorageError),
    /// The study definition could not be loaded.
    #[error("loading the study definition failed: {0:?}")]
    Study(StoreError),
    /// The token keys could not be set up.
    #[error("authentication: {0}")]
    Auth(String),
    /// The listener could not be bound or failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A store that is bound and ready to serve.
pub struct Bound {
    /// The bound listener.
    pub listener: tokio::net::TcpListener,
    /// The bound listener of the gRPC change feed.
    pub feed_listener: tokio::net::TcpListener,
    /// The router state.
    pub state: StoreState,
    /// What loading the study did, if it was loaded.
    pub study: Option<LoadCounts>,
}

/// Opens the database, loads the study if configured, and binds the listener.
pub async fn bind(config: &ServeConfig) -> Result<Bound, RunError> {
    let auth = config::auth(config).await.map_err(RunError::Auth)?;
    let store =
        trialbridge_storage::open_with(&config.database_url, config.store_options()).await?;
    let study = if config.load_study {
        Some(
            trial::study::load(&*store, Arc::new(TrialRules), &config.validation)
                .await
                .map_err(RunError::Study)?,
        )
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: config.listen,
        source,
    })?;
    let feed_listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.grpc_listen,
            source,
        })?;
    let mut api = StoreConfig::new(
        config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}/fhir")),
    );
    api.max_body_bytes = config.max_body_bytes;
    api.validation = config.validation.clone();
    api.export_dir = config.data_dir.join("exports");
    api.smart = config.smart.clone();
    api.cors_origins = config.cors_origins.clone();
    // The local profile signs people in to the pages with its development key, through
    // OAuth endpoints of its own; a configured identity provider takes precedence.
    let dev_sign_in = match &config.auth {
        AuthSource::LocalKey(dir) => {
            let dev = security::sign_in::DevSignIn::open(
                dir,
                &config.auth_issuer,
                &config.auth_audience,
                &api.base_url,
            )
            .map_err(|e| RunError::Auth(format!("the development signing key: {e}")))?;
            let origin = dev.origin().to_string();
            api.smart
                .authorize
                .get_or_insert_with(|| format!("{origin}/dev-issuer/authorize"));
            api.smart
                .token
                .get_or_insert_with(|| format!("{origin}/dev-issuer/token"));
            Some(dev)
        }
        AuthSource::Jwks(_) => None,
    };
    let mut state = StoreState::new(store, api, Arc::new(auth), Arc::new(TrialRules));
    state.dev_sign_in = dev_sign_in;
    Ok(Bound {
        listener,
        feed_listener,
        state,
        study,
    })
}

/// Starts the store and serves until `shutdown` resolves; in-flight requests finish first.
pub async fn run(
    config: &ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let b = bind(config).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    spawn_feed(b.feed_listener, b.state.clone(), stopped);
    let r = serve(b.listener, b.state, shutdown).await;
    let _ = stop.send(true);
    r
}

/// The `serve` command shared by the binaries: checks the configuration (one line per
/// problem, exit code 2), starts the store, prints the FHIR base URL alone on stdout, and
/// serves until Ctrl-C or SIGTERM.
pub async fn serve_command(args: ServeArgs) -> std::process::ExitCode {
    let config = match ServeConfig::from_args(args) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("trialbridge: configuration: {p}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    let bound = match bind(&config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("trialbridge: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if let Some(n) = bound.study {
        eprintln!(
            "trialbridge: MesemCart study loaded ({} created, {} updated, {} unchanged)",
            n.created, n.updated, n.unchanged
        );
    }
    let base = bound.state.config.base_url.clone();
    println!("{base}");
    local_profile_notice(&config);
    eprintln!(
        "trialbridge: trial store listening, FHIR base {base} (database {})",
        trialbridge_storage::redacted_url(&config.database_url)
    );
    if let Ok(a) = bound.feed_listener.local_addr() {
        eprintln!("trialbridge: change feed (gRPC) listening on {a}");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    spawn_feed(bound.feed_listener, bound.state.clone(), stopped);
    let result = serve(bound.listener, bound.state, shutdown_signal()).await;
    let _ = stop.send(true);
    match result {
        Ok(()) => {
            eprintln!("trialbridge: stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trialbridge: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Says loudly, on stderr, that the local profile signs its own tokens.
pub fn local_profile_notice(config: &ServeConfig) {
    if let AuthSource::LocalKey(dir) = &config.auth {
        eprintln!(
            "trialbridge: LOCAL PROFILE: every FHIR request needs a bearer token; tokens are \
             signed by the development key in {} and minted with \
             `trialbridge token --role ROLE [--site SITE]`. Never expose this server: production \
             needs TRIALBRIDGE_PROFILE=production and TRIALBRIDGE_AUTH_JWKS.",
            dir.display()
        );
    }
}

/// Serves the gRPC change feed in the background until `stop` turns true.
pub fn spawn_feed(
    listener: tokio::net::TcpListener,
    state: StoreState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = fhir::feed::serve(listener, state, stopped).await {
            tracing::error!(error = %e, "the change feed stopped");
        }
    });
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Serves the router on an already bound listener (tests bind port 0 and read the address).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: StoreState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: ([0, 0, 0, 0], 0).into(),
        source,
    })?;
    // Export jobs that were running when the server stopped run again.
    fhir::export::resume(&state).await;
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|source| RunError::Listen { addr, source })
}
