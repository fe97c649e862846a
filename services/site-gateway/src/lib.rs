//! The site gateway: runs inside the hospital, takes HL7 v2 over MLLP (and `POST /hl7v2`),
//! acknowledges a message only once it is durably stored in its own database, maps what
//! concerns enrolled subjects to pseudonymised FHIR and forwards it to the trial store from a
//! durable outbox. Everything about patients who are not enrolled stops here.
//!
//! Library with `router()` + `run()`; `main.rs` and the all-in-one `trialbridge serve` start
//! the same code.

pub mod access;
pub mod code_map;
pub mod config;
pub mod db;
pub mod ehr_pull;
pub mod forwarder;
pub mod http;
pub mod identity;
pub mod mapping;
pub mod mllp;
pub mod pseudonym;
pub mod receive;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{ApiAccess, GatewayArgs, GatewayConfig, SignIn, StoreToken};
pub use receive::Received;

use crate::db::{Db, EnrolConflict, SubjectFacts};
use crate::identity::Enrolment;

/// The gateway: configuration, database and the forwarder's wake-up.
#[derive(Clone)]
pub struct Gateway {
    /// Settings.
    pub config: Arc<GatewayConfig>,
    /// Database.
    pub db: Db,
    /// Wakes the forwarder when the outbox grows.
    pub wake: Arc<tokio::sync::Notify>,
    pub(crate) validation: Arc<trialbridge_validation::Options>,
    /// The MLLP connections and what happened to them.
    pub connections: Arc<mllp::Connections>,
    /// The site code map in use (the trial store's current version once read).
    pub code_map: code_map::CodeMap,
}

/// Failures while starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The database.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// A listener.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

pub(crate) fn now_instant() -> String {
    trialbridge_fhir::instant::format(time::OffsetDateTime::now_utc())
}

pub(crate) fn now_hl7() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub(crate) fn ack_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..20].to_string()
}

impl Gateway {
    /// Opens the database.
    pub fn open(config: GatewayConfig) -> Result<Self, GatewayError> {
        let db = Db::open(&config.database)?;
        let validation = trialbridge_validation::Options {
            extension_domains: vec!["https://fhir.mesemcart-sponsor.example/".into()],
            ..Default::default()
        };
        Ok(Self {
            config: Arc::new(config),
            db,
            wake: Arc::new(tokio::sync::Notify::new()),
            validation: Arc::new(validation),
            connections: Arc::default(),
            code_map: code_map::CodeMap::built_in(),
        })
    }

    /// Enrols a patient (site staff, `by`): the identifiers ((authority, MRN), each with its
    /// authority) now map to the subject. Gender and birth year, when given, update the
    /// subject's pseudonymous Patient in the trial store (what is not given stays as it is).
    pub async fn enrol(
        &self,
        identifiers: Vec<(String, String)>,
        subject_id: &str,
        facts: SubjectFacts,
        by: &str,
    ) -> Result<Result<Enrolment, EnrolConflict>, db::DbError> {
        let who = Enrolment {
            subject_id: subject_id.to_string(),
            patient_id: subject_id.to_ascii_lowercase(),
            site_study: self.config.site_study(),
        };
        let queued = self
            .db
            .enrol(
                identifiers,
                who.clone(),
                facts,
                by.to_string(),
                now_instant(),
            )
            .await?;
        Ok(queued.map(|row| {
            if row.is_some() {
                self.wake.notify_one();
            }
            who
        }))
    }
}

/// Binds both listeners, then serves MLLP, the HTTP API and the forwarder until `shutdown`.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let gateway = Gateway::open(config)?;
    let mllp = tokio::net::TcpListener::bind(gateway.config.mllp_listen)
        .await
        .map_err(|source| GatewayError::Listen {
            addr: gateway.config.mllp_listen,
            source,
        })?;
    let http = tokio::net::TcpListener::bind(gateway.config.http_listen)
        .await
        .map_err(|source| GatewayError::Listen {
            addr: gateway.config.http_listen,
            source,
        })?;
    serve(gateway, mllp, http, shutdown).await;
    Ok(())
}

/// Serves on bound listeners until `shutdown`: stops accepting, lets in-flight messages finish
/// within the grace period (`shutdown_grace`), then drops what is still open. A frame that
/// had not ended was never acknowledged, so the sender resends it: nothing is lost.
pub async fn serve(
    gateway: Gateway,
    mllp: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let forwarder = tokio::spawn(forwarder::run(gateway.clone(), stop_rx.clone()));
    let code_map = tokio::spawn(gateway.code_map.clone().follow(
        gateway.config.clone(),
        gateway.config.code_map_refresh,
        stop_rx.clone(),
    ));
    let puller = gateway
        .config
        .ehr
        .clone()
        .map(|ehr| tokio::spawn(ehr_pull::run(gateway.clone(), ehr, stop_rx.clone())));
    let listener = tokio::spawn(mllp::serve(gateway.clone(), mllp, stop_rx.clone()));
    let mut http_stop = stop_rx.clone();
    let hosts = http
        .local_addr()
        .map(|a| gateway.config.api_hosts(a))
        .unwrap_or_default();
    let grace = gateway.config.shutdown_grace;
    let api = tokio::spawn(async move {
        let _ = axum::serve(
            http,
            http::router(gateway, hosts).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|s| *s).await;
        })
        .await;
    });
    shutdown.await;
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    let mut tasks = vec![listener, api, forwarder, code_map];
    tasks.extend(puller);
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            tracing::warn!("the grace period ended before a gateway task finished; stopping it");
            abort.abort();
        }
    }
}
