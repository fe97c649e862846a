//! trial-store: the MesemCart trial database as a FHIR R4 (4.0.1) server.
//!
//! The crate is a library: [`router`] builds the axum router over a [`StoreState`], and [`run`]
//! opens the database, binds the listener and serves until shutdown. The all-in-one
//! `trialbridge` binary and the integration tests start exactly this code.
//!
//! Layout: `http` (routes and handlers, the only module that knows HTTP), `error` (the one place
//! where failures become OperationOutcomes), `interactions` (create/update/delete semantics on a
//! storage write transaction, shared by the REST handlers and Bundle processing), `bundle`
//! (transaction and batch), `history`, `search`, `capability`.

mod bundle;
mod capability;
mod error;
mod history;
mod http;
mod interactions;
mod negotiate;
mod search;

use std::net::SocketAddr;
use std::sync::Arc;

pub use error::ApiError;
pub use interactions::{load_resource, LoadResult};
use trialbridge_storage::ResourceStore;

/// Settings of the FHIR API.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Public base URL of the FHIR API (ends in `/fhir`), used in `Location`, `fullUrl` and links.
    pub base_url: String,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Page size when `_count` is not given.
    pub default_count: usize,
    /// Largest page size honoured.
    pub max_count: usize,
}

impl StoreConfig {
    /// Defaults for a base URL.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            max_body_bytes: 16 * 1024 * 1024,
            default_count: 20,
            max_count: 1000,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct StoreState {
    /// The trial database.
    pub store: Arc<dyn ResourceStore>,
    /// API settings.
    pub config: Arc<StoreConfig>,
}

/// The router of the FHIR API (`/fhir/...`) and the health endpoints (`/livez`, `/readyz`).
pub fn router(state: StoreState) -> axum::Router {
    http::routes(state)
}

/// How to start the trial store on its own.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `sqlite://path` (PostgreSQL follows).
    pub database_url: String,
    /// Public base URL; defaults to `http://{listen}/fhir`.
    pub base_url: Option<String>,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
}

/// Failures while starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database could not be opened.
    #[error(transparent)]
    Storage(#[from] trialbridge_storage::StorageError),
    /// The listener could not be bound or failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Opens the database, binds `config.listen` and serves until `shutdown` resolves; in-flight
/// requests finish first.
pub async fn run(
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = trialbridge_storage::open(&config.database_url).await?;
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
    let mut api = StoreConfig::new(
        config
            .base_url
            .unwrap_or_else(|| format!("http://{addr}/fhir")),
    );
    api.max_body_bytes = config.max_body_bytes;
    serve(
        listener,
        StoreState {
            store,
            config: Arc::new(api),
        },
        shutdown,
    )
    .await
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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| RunError::Listen { addr, source })
}
