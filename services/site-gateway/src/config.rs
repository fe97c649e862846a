//! The gateway's settings: command-line flags mirrored by `TRIALBRIDGE_*` variables, checked
//! into a [`GatewayConfig`] that reports every bad value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::ehr_pull;

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
    /// The site's IANA time zone, for HL7 times that carry no offset (daylight-saving time
    /// from the tz database).
    #[arg(
        long,
        env = "TRIALBRIDGE_SITE_TIMEZONE",
        default_value = "Europe/Berlin",
        global = true
    )]
    pub site_timezone: String,
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
    /// Host names (`host:port`) the gateway's HTTP API answers to, comma-separated (default:
    /// the listen address, and `localhost` when it is a loopback or any-address). A request
    /// naming another Host is refused (DNS rebinding).
    #[arg(long, env = "TRIALBRIDGE_GATEWAY_HOSTS", global = true)]
    pub gateway_hosts: Option<String>,
    /// Most simultaneous MLLP connections.
    #[arg(
        long,
        env = "TRIALBRIDGE_MLLP_MAX_CONNECTIONS",
        default_value_t = 64,
        global = true
    )]
    pub mllp_max_connections: usize,
    /// Most simultaneous MLLP connections from one address.
    #[arg(
        long,
        env = "TRIALBRIDGE_MLLP_MAX_PER_ADDRESS",
        default_value_t = 16,
        global = true
    )]
    pub mllp_max_per_address: usize,
    /// Seconds an MLLP connection may stay without a complete frame before it is closed.
    #[arg(
        long,
        env = "TRIALBRIDGE_MLLP_IDLE_SECONDS",
        default_value_t = 120,
        global = true
    )]
    pub mllp_idle_seconds: u64,
    /// Seconds a started MLLP frame has to complete.
    #[arg(
        long,
        env = "TRIALBRIDGE_MLLP_FRAME_SECONDS",
        default_value_t = 30,
        global = true
    )]
    pub mllp_frame_seconds: u64,
    /// Seconds the gateway takes at most to stop after SIGTERM (open frames are dropped
    /// unacknowledged after it; the sender resends them).
    #[arg(
        long,
        env = "TRIALBRIDGE_SHUTDOWN_GRACE_SECONDS",
        default_value_t = 10,
        global = true
    )]
    pub shutdown_grace_seconds: u64,
    /// Seconds between reads of the site code map (ConceptMap mesemcart-site-local-codes)
    /// from the trial store; a replay reads it first anyway.
    #[arg(
        long,
        env = "TRIALBRIDGE_CODE_MAP_REFRESH_SECONDS",
        default_value_t = 60,
        global = true
    )]
    pub code_map_refresh_seconds: u64,
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
    /// The site's time zone, for zone-less times.
    pub timezone: jiff::tz::TimeZone,
    /// Largest MLLP frame.
    pub max_frame_bytes: usize,
    /// A connection without a complete frame for this long is closed.
    pub idle_timeout: Duration,
    /// A started frame must complete within this time.
    pub frame_timeout: Duration,
    /// Most simultaneous MLLP connections.
    pub max_connections: usize,
    /// Most simultaneous MLLP connections from one address.
    pub max_connections_per_address: usize,
    /// How long a stop may take at most.
    pub shutdown_grace: Duration,
    /// Who may call the HTTP API.
    pub api: ApiAccess,
    /// The EHR's FHIR API to poll, if any.
    pub ehr: Option<ehr_pull::EhrConfig>,
    /// How the gateway authenticates to the trial store.
    pub store_token: StoreToken,
    /// How often the site code map is read from the trial store.
    pub code_map_refresh: Duration,
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
    /// A configuration with the defaults of the command line: listeners on free loopback
    /// ports, tokens checked by `tokens` (what tests and embedders start from).
    pub fn new(
        site: &str,
        store_url: &str,
        database: PathBuf,
        tokens: Arc<trialbridge_auth::Authenticator>,
    ) -> Self {
        Self {
            mllp_listen: "127.0.0.1:0".parse().expect("an address"),
            http_listen: "127.0.0.1:0".parse().expect("an address"),
            database,
            site: site.to_string(),
            store_url: store_url.trim_end_matches('/').to_string(),
            timezone: crate::mapping::berlin(),
            max_frame_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(30),
            max_connections: 64,
            max_connections_per_address: 16,
            shutdown_grace: Duration::from_secs(10),
            api: ApiAccess {
                tokens,
                hosts: Vec::new(),
                sign_in: None,
            },
            ehr: None,
            store_token: StoreToken::None,
            code_map_refresh: Duration::from_secs(60),
        }
    }

    /// Every problem of the arguments, one sentence each (what [`Self::from_args`] reports),
    /// without building anything.
    pub fn check_args(a: &GatewayArgs) -> Result<(), Vec<String>> {
        let tokens = Arc::new(trialbridge_auth::Authenticator::none());
        Self::from_args(a, "http://127.0.0.1/fhir", PathBuf::new(), tokens).map(|_| ())
    }

    /// Checks the arguments; `store_url` falls back to `default_store`, the database to
    /// `default_database`; the API's tokens are checked by `tokens`.
    pub fn from_args(
        a: &GatewayArgs,
        default_store: &str,
        default_database: PathBuf,
        tokens: Arc<trialbridge_auth::Authenticator>,
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
        let timezone = match jiff::tz::TimeZone::get(&a.site_timezone) {
            Ok(z) => z,
            Err(_) => {
                problems.push(format!(
                    "TRIALBRIDGE_SITE_TIMEZONE / --site-timezone: '{}' is not an IANA time zone such as Europe/Berlin",
                    a.site_timezone
                ));
                crate::mapping::berlin()
            }
        };
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
        for (v, what) in [
            (a.mllp_max_connections, "TRIALBRIDGE_MLLP_MAX_CONNECTIONS"),
            (a.mllp_max_per_address, "TRIALBRIDGE_MLLP_MAX_PER_ADDRESS"),
            (
                a.mllp_idle_seconds as usize,
                "TRIALBRIDGE_MLLP_IDLE_SECONDS",
            ),
            (
                a.mllp_frame_seconds as usize,
                "TRIALBRIDGE_MLLP_FRAME_SECONDS",
            ),
        ] {
            if v == 0 {
                problems.push(format!("{what}: must be at least 1"));
            }
        }
        let hosts: Vec<String> = a
            .gateway_hosts
            .iter()
            .flat_map(|h| h.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
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
                timezone,
                max_frame_bytes: 1024 * 1024,
                idle_timeout: Duration::from_secs(a.mllp_idle_seconds),
                frame_timeout: Duration::from_secs(a.mllp_frame_seconds),
                max_connections: a.mllp_max_connections,
                max_connections_per_address: a.mllp_max_per_address,
                shutdown_grace: Duration::from_secs(a.shutdown_grace_seconds),
                code_map_refresh: Duration::from_secs(a.code_map_refresh_seconds.max(1)),
                api: ApiAccess {
                    tokens,
                    hosts,
                    sign_in: None,
                },
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

    /// The Host values the HTTP API answers to: the configured ones, else the listen address
    /// (bound, so that port 0 became the real port), with `localhost` for a loopback or
    /// any-address listener.
    pub fn api_hosts(&self, bound: SocketAddr) -> Vec<String> {
        if !self.api.hosts.is_empty() {
            return self.api.hosts.clone();
        }
        let port = bound.port();
        let mut hosts = vec![
            format!("{}:{port}", bound.ip()),
            format!("[{}]:{port}", bound.ip()),
        ];
        if bound.ip().is_loopback() || bound.ip().is_unspecified() {
            hosts.extend([
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ]);
        }
        hosts
    }
}

/// Who may call the gateway's HTTP API: bearer tokens checked like the trial store's (the
/// same JWKS, roles and sites), on the configured Host names only.
#[derive(Clone)]
pub struct ApiAccess {
    /// Verifies bearer tokens.
    pub tokens: Arc<trialbridge_auth::Authenticator>,
    /// Accepted Host values (`host:port`, lower case); empty: derived from the listener.
    pub hosts: Vec<String>,
    /// Where the console's people sign in (OAuth 2.0 authorization code + PKCE), published at
    /// `/.well-known/smart-configuration`; `None`: the console cannot sign anyone in.
    pub sign_in: Option<SignIn>,
}

/// The OAuth 2.0 endpoints of the issuer of the gateway's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// Authorization endpoint.
    pub authorize: String,
    /// Token endpoint.
    pub token: String,
}

impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccess")
            .field("hosts", &self.hosts)
            .field("sign_in", &self.sign_in)
            .finish_non_exhaustive()
    }
}
