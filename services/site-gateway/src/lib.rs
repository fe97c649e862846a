//! The site gateway: runs inside the hospital, takes HL7 v2 over MLLP (and `POST /hl7v2`),
//! acknowledges a message only once it is durably stored in its own database, maps what
//! concerns enrolled subjects to pseudonymised FHIR and forwards it to the trial store from a
//! durable outbox. Everything about patients who are not enrolled stops here.
//!
//! Library with `router()` + `run()`; `main.rs` and the all-in-one `trialbridge serve` start
//! the same code.

pub mod db;
pub mod ehr_pull;
pub mod forwarder;
pub mod http;
pub mod mapping;
pub mod mllp;
pub mod pseudonym;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use trialbridge_hl7v2::ack::{self, AckCode, AckError, Acknowledged};
use trialbridge_hl7v2::Message;

use crate::db::{Db, NewMessage, State};
use crate::mapping::Event;
use crate::pseudonym::{Enrolment, Origin, Outgoing};

/// Settings of the gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// MLLP listen address.
    #[arg(
        long,
        env = "TRIALBRIDGE_MLLP_LISTEN",
        default_value = "127.0.0.1:2575",
        global = true
    )]
    pub mllp_listen: String,
    /// HTTP listen address of the gateway API (`/hl7v2`, `/enrolments`, `/dead-letters`).
    #[arg(
        long,
        env = "TRIALBRIDGE_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8081",
        global = true
    )]
    pub gateway_listen: String,
    /// The gateway's own database file (default: `site-gateway.db` beside the store's database).
    #[arg(long, env = "TRIALBRIDGE_GATEWAY_DATABASE", global = true)]
    pub gateway_database: Option<PathBuf>,
    /// The site this gateway serves (`site-01`; its study is `mesemcart-site-01`).
    #[arg(long, env = "TRIALBRIDGE_SITE", default_value = "site-01")]
    // Not global: `trialbridge token --site` names the sites of a token (give the gateway's
    // site before the subcommand, or by TRIALBRIDGE_SITE).
    pub site: String,
    /// FHIR base URL of the trial store to forward to (default: the store of this process).
    #[arg(long, env = "TRIALBRIDGE_STORE_URL", global = true)]
    pub store_url: Option<String>,
    /// Bearer token (a `site` token for this site's study) the gateway sends to the trial store.
    #[arg(
        long,
        env = "TRIALBRIDGE_STORE_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub store_token: Option<String>,
    /// UTC offset for HL7 times that carry none.
    #[arg(
        long,
        env = "TRIALBRIDGE_SITE_UTC_OFFSET",
        default_value = "+01:00",
        global = true
    )]
    pub site_utc_offset: String,
    /// FHIR R4 base URL of the EHR to poll for enrolled subjects (off when not set).
    #[arg(long, env = "TRIALBRIDGE_EHR_FHIR_URL", global = true)]
    pub ehr_fhir_url: Option<String>,
    /// Identifier system of the site's MRNs in the EHR.
    #[arg(
        long,
        env = "TRIALBRIDGE_EHR_MRN_SYSTEM",
        default_value = "urn:mesemcart:site:mrn",
        global = true
    )]
    pub ehr_mrn_system: String,
    /// OAuth2 token endpoint of the EHR (client credentials).
    #[arg(long, env = "TRIALBRIDGE_EHR_TOKEN_URL", global = true)]
    pub ehr_token_url: Option<String>,
    /// OAuth2 client id.
    #[arg(long, env = "TRIALBRIDGE_EHR_CLIENT_ID", global = true)]
    pub ehr_client_id: Option<String>,
    /// OAuth2 client secret (from the environment or a Kubernetes Secret).
    #[arg(
        long,
        env = "TRIALBRIDGE_EHR_CLIENT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub ehr_client_secret: Option<String>,
    /// Seconds between EHR polls.
    #[arg(
        long,
        env = "TRIALBRIDGE_EHR_POLL_SECONDS",
        default_value_t = 60,
        global = true
    )]
    pub ehr_poll_seconds: u64,
}

/// Checked gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// MLLP listen address.
    pub mllp_listen: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Database file.
    pub database: PathBuf,
    /// Site name (`site-01`).
    pub site: String,
    /// Trial store FHIR base.
    pub store_url: String,
    /// Offset for zone-less times.
    pub utc_offset: String,
    /// Largest MLLP frame.
    pub max_frame_bytes: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// Most simultaneous MLLP connections.
    pub max_connections: usize,
    /// The EHR's FHIR API to poll, if any.
    pub ehr: Option<ehr_pull::EhrConfig>,
    /// How the gateway authenticates to the trial store.
    pub store_token: StoreToken,
}

/// The bearer token the gateway sends to the trial store.
#[derive(Clone, Default)]
pub enum StoreToken {
    /// None configured (the store will refuse the gateway's writes).
    #[default]
    None,
    /// A fixed token (`TRIALBRIDGE_STORE_TOKEN`).
    Static(String),
    /// Minted afresh for each request (the all-in-one local profile signs its own).
    Minted(std::sync::Arc<dyn Fn() -> String + Send + Sync>),
}

impl StoreToken {
    /// The token to send now, if any.
    pub fn current(&self) -> Option<String> {
        match self {
            StoreToken::None => None,
            StoreToken::Static(t) => Some(t.clone()),
            StoreToken::Minted(f) => Some(f()),
        }
    }
}

impl std::fmt::Debug for StoreToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreToken::None => "None",
            StoreToken::Static(_) => "Static(..)",
            StoreToken::Minted(_) => "Minted(..)",
        })
    }
}

impl GatewayConfig {
    /// Checks the arguments; `store_url` falls back to `default_store`, the database to
    /// `default_database`.
    pub fn from_args(
        a: &GatewayArgs,
        default_store: &str,
        default_database: PathBuf,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut addr = |v: &str, what: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| {
                    problems.push(format!(
                        "{what}: '{v}' is not an address such as 127.0.0.1:2575"
                    ))
                })
                .ok()
        };
        let mllp = addr(&a.mllp_listen, "TRIALBRIDGE_MLLP_LISTEN / --mllp-listen");
        let http = addr(
            &a.gateway_listen,
            "TRIALBRIDGE_GATEWAY_LISTEN / --gateway-listen",
        );
        let site_ok = a
            .site
            .strip_prefix("site-")
            .is_some_and(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_digit()));
        if !site_ok {
            problems.push(format!(
                "TRIALBRIDGE_SITE / --site: '{}' is not a site such as site-01",
                a.site
            ));
        }
        let off = a.site_utc_offset.as_bytes();
        if !(off.len() == 6 && matches!(off[0], b'+' | b'-') && off[3] == b':') {
            problems.push(format!("TRIALBRIDGE_SITE_UTC_OFFSET / --site-utc-offset: '{}' is not an offset such as +01:00", a.site_utc_offset));
        }
        let oauth = match (&a.ehr_token_url, &a.ehr_client_id, &a.ehr_client_secret) {
            (Some(u), Some(i), Some(s)) => Some((u.clone(), i.clone(), s.clone())),
            (None, None, None) => None,
            _ => {
                problems.push(
                    "TRIALBRIDGE_EHR_TOKEN_URL, _CLIENT_ID and _CLIENT_SECRET go together".into(),
                );
                None
            }
        };
        if let Some(u) = &a.ehr_fhir_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                problems.push(format!(
                    "TRIALBRIDGE_EHR_FHIR_URL / --ehr-fhir-url: '{u}' is not an http(s) URL"
                ));
            }
        }
        let ehr = a.ehr_fhir_url.as_ref().map(|base| ehr_pull::EhrConfig {
            base: base.clone(),
            mrn_system: a.ehr_mrn_system.clone(),
            oauth: oauth.clone(),
            every: Duration::from_secs(a.ehr_poll_seconds.max(1)),
        });
        match (mllp, http) {
            (Some(mllp_listen), Some(http_listen)) if problems.is_empty() => Ok(Self {
                mllp_listen,
                http_listen,
                database: a.gateway_database.clone().unwrap_or(default_database),
                site: a.site.clone(),
                store_url: a
                    .store_url
                    .clone()
                    .unwrap_or_else(|| default_store.to_string())
                    .trim_end_matches('/')
                    .to_string(),
                utc_offset: a.site_utc_offset.clone(),
                max_frame_bytes: 1024 * 1024,
                idle_timeout: Duration::from_secs(120),
                max_connections: 64,
                ehr,
                store_token: a
                    .store_token
                    .clone()
                    .map_or(StoreToken::None, StoreToken::Static),
            }),
            _ => Err(problems),
        }
    }

    /// The site study of this gateway (`mesemcart-site-01`).
    pub fn site_study(&self) -> String {
        format!("mesemcart-{}", self.site)
    }
}

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

fn now_hl7() -> String {
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

fn ack_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..20].to_string()
}

/// What receiving a message produced: the acknowledgement to send, if any.
pub struct Received {
    /// The ACK text (`None` when enhanced mode asks for none).
    pub ack: Option<String>,
    /// MSA-1.
    pub code: AckCode,
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
        })
    }

    fn reply(of: &Acknowledged, code: AckCode, errors: &[AckError]) -> Received {
        let text = ack::build(of, code, errors, &ack_id(), &now_hl7());
        Received {
            ack: of.wants(code).then_some(text),
            code,
        }
    }

    /// Receives one message: checks, deduplicates, maps, stores, and answers. AA only after
    /// the message's row is committed. Traced as `hl7.message`, the root of the trace that the
    /// outbox carries on to the store.
    pub async fn receive(&self, bytes: &[u8]) -> Received {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "hl7.message",
            otel.kind = "consumer",
            messaging.system = "hl7v2",
            hl7.site = %self.config.site,
            hl7.ack = tracing::field::Empty,
        );
        let received = self.receive_traced(bytes).instrument(span.clone()).await;
        span.record("hl7.ack", received.code.as_str());
        received
    }

    async fn receive_traced(&self, bytes: &[u8]) -> Received {
        let msg = match tracing::info_span!("hl7.parse").in_scope(|| Message::parse(bytes)) {
            Ok(m) => m,
            Err(e) => {
                let of = Acknowledged::unparsed(bytes);
                let code = if matches!(
                    e,
                    trialbridge_hl7v2::ParseError::NoMsh { .. }
                        | trialbridge_hl7v2::ParseError::Empty
                ) {
                    AckCode::AR
                } else {
                    AckCode::AE
                };
                tracing::warn!(error = %e, "refused a message that does not parse");
                return Self::reply(&of, code, &[AckError::message("100", e.to_string())]);
            }
        };
        let of = Acknowledged::of(&msg);
        let (ty, trigger, _) = msg.message_type();
        if !mapping::supported(&ty, &trigger) {
            return Self::reply(
                &of,
                AckCode::AR,
                &[AckError::at(
                    "MSH",
                    1,
                    9,
                    if ty == "ADT" || ty == "ORU" {
                        "201"
                    } else {
                        "200"
                    },
                    format!(
                        "{ty}^{trigger} is not taken here (ADT A01/A03/A04/A08/A40, ORU R01 are)"
                    ),
                )],
            );
        }
        let version = msg.version();
        let version_ok = version
            .strip_prefix("2.")
            .and_then(|r| r.chars().next())
            .is_some_and(|c| ('1'..='8').contains(&c));
        if !version_ok {
            return Self::reply(
                &of,
                AckCode::AR,
                &[AckError::at(
                    "MSH",
                    1,
                    12,
                    "203",
                    format!("version '{version}' is not supported (2.1 to 2.8 are)"),
                )],
            );
        }
        let processing = msg.msh(11).component(1);
        if !matches!(processing.as_ref(), "P" | "T") {
            return Self::reply(
                &of,
                AckCode::AR,
                &[AckError::at(
                    "MSH",
                    1,
                    11,
                    "202",
                    format!("processing id '{processing}' is not taken (P or T)"),
                )],
            );
        }
        let control_id = msg.control_id();
        if control_id.is_empty() {
            return Self::reply(
                &of,
                AckCode::AE,
                &[AckError::at(
                    "MSH",
                    1,
                    10,
                    "101",
                    "MSH-10 (message control id) is required",
                )],
            );
        }
        let sender = format!("{}^{}", msg.msh(3).value(), msg.msh(4).value());
        match self.db.previous_ack(&sender, &control_id).await {
            Ok(Some(previous)) => {
                let _ = self.db.bump("duplicates", 1).await;
                let code = if previous.contains("|AA|") || previous.contains("|CA|") {
                    AckCode::AA
                } else {
                    AckCode::AE
                };
                return Received {
                    ack: of.wants(code).then_some(previous),
                    code,
                };
            }
            Ok(None) => {}
            Err(e) => return self.unavailable(&of, e),
        }
        let mapped =
            match tracing::info_span!("hl7.map", hl7.message_type = %format!("{ty}^{trigger}"))
                .in_scope(|| mapping::map(&msg, &self.config.site, &self.config.utc_offset))
            {
                Ok(m) => m,
                Err(errors) => return Self::reply(&of, AckCode::AE, &errors),
            };
        let received = now_instant();
        let enrolment = match self.db.enrolment_of(&mapped.patient.identifiers).await {
            Ok(e) => e,
            Err(e) => return self.unavailable(&of, e),
        };
        let reply = Self::reply(&of, AckCode::AA, &[]);
        let ack_text = reply
            .ack
            .clone()
            .unwrap_or_else(|| ack::build(&of, AckCode::AA, &[], &ack_id(), &now_hl7()));
        let base = NewMessage {
            sender: &sender,
            control_id: &control_id,
            received: &received,
            raw: None,
            state: State::Done,
            reason: None,
            bundle: None,
            ack: &ack_text,
        };
        // A merge: the surviving identifiers join the subject of either side, if enrolled.
        let enrolment = match (&enrolment, &mapped.event) {
            (None, Event::Merge { prior }) => match self.db.enrolment_of(prior).await {
                Ok(e) => e,
                Err(e) => return self.unavailable(&of, e),
            },
            _ => enrolment,
        };
        let stored = match (&enrolment, &mapped.event) {
            (Some(who), Event::Merge { prior }) => {
                let mut ids = mapped.patient.identifiers.clone();
                ids.extend(prior.iter().cloned());
                if let Err(e) = self.db.enrol(ids, who.clone(), received.clone()).await {
                    return self.unavailable(&of, e);
                }
                self.db
                    .record(
                        NewMessage {
                            raw: Some(bytes),
                            reason: Some("merge applied to the key list"),
                            ..base
                        },
                        Some(("merges", 1)),
                    )
                    .await
            }
            (None, _) => {
                self.db
                    .record(
                        NewMessage {
                            reason: Some("not enrolled"),
                            ..base
                        },
                        Some(("not_enrolled", 1)),
                    )
                    .await
            }
            (Some(who), _) => {
                let origin = Origin {
                    sender: sender.clone(),
                    control_id: control_id.clone(),
                    received: received.clone(),
                    site: self.config.site.clone(),
                };
                let (out, dropped) = pseudonym::outgoing(&mapped, who, &origin, &self.validation);
                if dropped > 0 {
                    let _ = self
                        .db
                        .bump("observations_outside_the_dataset", dropped as i64)
                        .await;
                }
                match out {
                    Outgoing::Bundle(b) => {
                        let text = b.to_string();
                        self.db
                            .record(
                                NewMessage {
                                    raw: Some(bytes),
                                    state: State::Outbox,
                                    bundle: Some(&text),
                                    ..base
                                },
                                Some(("queued", 1)),
                            )
                            .await
                    }
                    Outgoing::Nothing => {
                        self.db
                            .record(
                                NewMessage {
                                    reason: Some("nothing of the trial's dataset"),
                                    ..base
                                },
                                None,
                            )
                            .await
                    }
                    Outgoing::Dead(why) => {
                        self.db
                            .record(
                                NewMessage {
                                    raw: Some(bytes),
                                    state: State::Dead,
                                    reason: Some(&why),
                                    ..base
                                },
                                Some(("dead_letters", 1)),
                            )
                            .await
                    }
                }
            }
        };
        match stored {
            Ok(Ok(_)) => {
                self.wake.notify_one();
                reply
            }
            // The same message raced in on another connection: its acknowledgement stands.
            Ok(Err(previous)) => Received {
                ack: of.wants(AckCode::AA).then_some(previous),
                code: AckCode::AA,
            },
            Err(e) => self.unavailable(&of, e),
        }
    }

    fn unavailable(&self, of: &Acknowledged, e: db::DbError) -> Received {
        tracing::error!(error = %e, "gateway database failed; answering AR so that the sender resends");
        Self::reply(
            of,
            AckCode::AR,
            &[AckError::message(
                "207",
                "the gateway cannot store the message now; resend it unchanged",
            )],
        )
    }

    /// Receives what one frame (or one HTTP body) carries: a message, or a batch/file
    /// (FHS/BHS ... BTS/FTS) whose messages are each received in order and acknowledged
    /// together in a batch of ACKs. A malformed envelope is refused as a whole (AR).
    pub async fn receive_frame(&self, bytes: &[u8]) -> Option<String> {
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let start = body
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        if !(body[start..].starts_with(b"BHS") || body[start..].starts_with(b"FHS")) {
            return self.receive(bytes).await.ack;
        }
        let messages = match trialbridge_hl7v2::parse_batch(bytes) {
            Ok(m) => m,
            Err(e) => {
                let of = Acknowledged::unparsed(bytes);
                return Some(ack::build(
                    &of,
                    AckCode::AR,
                    &[AckError::message("100", e.to_string())],
                    &ack_id(),
                    &now_hl7(),
                ));
            }
        };
        let mut out = format!("BHS|^~\\&|||||{}\r", now_hl7());
        let mut n = 0;
        for m in &messages {
            if let Some(a) = self.receive(m.text().as_bytes()).await.ack {
                out.push_str(&a);
                n += 1;
            }
        }
        out.push_str(&format!("BTS|{n}\r"));
        Some(out)
    }

    /// Enrols a patient (site staff): their MRNs now map to the subject, and the pseudonymous
    /// Patient (gender and birth year only) is queued for the trial store.
    pub async fn enrol(
        &self,
        identifiers: Vec<(String, String)>,
        subject_id: &str,
        gender: Option<&str>,
        birth_year: Option<&str>,
    ) -> Result<Enrolment, db::DbError> {
        let who = Enrolment {
            subject_id: subject_id.to_string(),
            patient_id: subject_id.to_ascii_lowercase(),
            site_study: self.config.site_study(),
        };
        let when = now_instant();
        self.db
            .enrol(identifiers, who.clone(), when.clone())
            .await?;
        let mut p = serde_json::json!({"resourceType": "Patient", "id": who.patient_id});
        if let Some(g) = gender {
            p["gender"] = serde_json::json!(g);
        }
        if let Some(y) = birth_year {
            p["birthDate"] = serde_json::json!(y);
        }
        let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": p, "request": {"method": "PUT", "url": format!("Patient/{}", who.patient_id)}}]});
        let control = format!("enrolment-{}-{}", who.subject_id, when);
        let text = bundle.to_string();
        self.db
            .record(
                NewMessage {
                    sender: "site-gateway^enrolment",
                    control_id: &control,
                    received: &when,
                    raw: None,
                    state: State::Outbox,
                    reason: None,
                    bundle: Some(&text),
                    ack: "",
                },
                Some(("enrolments", 1)),
            )
            .await?
            .ok();
        self.wake.notify_one();
        Ok(who)
    }

    /// Re-processes a dead letter with the current key list and code maps.
    pub async fn replay(&self, id: i64) -> Result<Option<String>, db::DbError> {
        let Some((d, raw)) = self.db.dead_letter(id).await? else {
            return Ok(None);
        };
        let Ok(msg) = Message::parse(&raw) else {
            return Ok(Some("the message no longer parses".into()));
        };
        let mapped = match mapping::map(&msg, &self.config.site, &self.config.utc_offset) {
            Ok(m) => m,
            Err(errors) => {
                return Ok(Some(
                    errors
                        .iter()
                        .map(|e| e.text.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                ))
            }
        };
        let Some(who) = self.db.enrolment_of(&mapped.patient.identifiers).await? else {
            self.db
                .requeue(id, State::Done, Some("not enrolled (replay)".into()), None)
                .await?;
            return Ok(Some("not enrolled".into()));
        };
        let origin = Origin {
            sender: d.sender,
            control_id: d.control_id,
            received: d.received,
            site: self.config.site.clone(),
        };
        match pseudonym::outgoing(&mapped, &who, &origin, &self.validation).0 {
            Outgoing::Bundle(b) => {
                self.db
                    .requeue(id, State::Outbox, None, Some(b.to_string()))
                    .await?;
                self.wake.notify_one();
                Ok(Some("queued".into()))
            }
            Outgoing::Nothing => {
                self.db
                    .requeue(
                        id,
                        State::Done,
                        Some("nothing of the trial's dataset (replay)".into()),
                        None,
                    )
                    .await?;
                Ok(Some("nothing to forward".into()))
            }
            Outgoing::Dead(why) => {
                self.db
                    .requeue(id, State::Dead, Some(why.clone()), None)
                    .await?;
                Ok(Some(format!("still dead: {why}")))
            }
        }
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

/// Serves on bound listeners until `shutdown`: stops accepting, lets in-flight messages finish.
pub async fn serve(
    gateway: Gateway,
    mllp: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let forwarder = tokio::spawn(forwarder::run(gateway.clone(), stop_rx.clone()));
    let puller = gateway
        .config
        .ehr
        .clone()
        .map(|ehr| tokio::spawn(ehr_pull::run(gateway.clone(), ehr, stop_rx.clone())));
    let listener = tokio::spawn(mllp::serve(gateway.clone(), mllp, stop_rx.clone()));
    let mut http_stop = stop_rx.clone();
    let api = tokio::spawn(async move {
        let _ = axum::serve(http, http::router(gateway))
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
    });
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = listener.await;
    let _ = api.await;
    let _ = forwarder.await;
    if let Some(p) = puller {
        let _ = p.await;
    }
}
