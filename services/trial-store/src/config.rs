//! Configuration of `serve`: environment variables with the `TRIALBRIDGE_` prefix, mirrored by
//! flags. Every bad value is reported, one line each, before start-up stops.

use std::net::SocketAddr;

/// Flags (and their environment variables) of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the FHIR API.
    #[arg(
        long,
        env = "TRIALBRIDGE_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: String,
    /// Address of the gRPC change feed.
    #[arg(
        long,
        env = "TRIALBRIDGE_GRPC_LISTEN",
        default_value = "127.0.0.1:8082",
        global = true
    )]
    pub grpc_listen: String,
    /// Database: sqlite://path (embedded, created if missing) or
    /// postgres://user@host:port/database (migrations applied at start-up). Default:
    /// sqlite://DATA_DIR/trialbridge.db; a relative SQLite path is relative to the data
    /// directory when one is given.
    #[arg(
        long,
        env = "TRIALBRIDGE_DATABASE_URL",
        // A PostgreSQL URL may carry a password: `--help` names the variable, not its value.
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,
    /// Directory for everything the process writes by default: the SQLite database, the site
    /// gateway's database, exports and the local profile's signing key (default: `data`, or
    /// the directory of the SQLite file --database-url names).
    #[arg(long, env = "TRIALBRIDGE_DATA_DIR", global = true)]
    pub data_dir: Option<String>,
    /// Public base URL of the FHIR API (default http://LISTEN/fhir).
    #[arg(long, env = "TRIALBRIDGE_BASE_URL", global = true)]
    pub base_url: Option<String>,
    /// Largest request body in bytes.
    #[arg(
        long,
        env = "TRIALBRIDGE_MAX_BODY_BYTES",
        default_value = "16777216",
        global = true
    )]
    pub max_body_bytes: String,
    /// Seconds one database read may run before it is cancelled (a `too-costly` answer).
    #[arg(
        long,
        env = "TRIALBRIDGE_STATEMENT_TIMEOUT",
        default_value = "30",
        global = true
    )]
    pub statement_timeout: String,
    /// Mebibytes of current versions a PostgreSQL replica keeps in memory for reads by id,
    /// kept coherent with every replica's writes; 0 turns the cache off.
    #[arg(
        long,
        env = "TRIALBRIDGE_READ_CACHE_MB",
        default_value = "64",
        global = true
    )]
    pub read_cache_mb: String,
    /// Origins whose pages may call the API from a browser (CORS), comma-separated; `*`: any.
    /// Safe as `*`: the API takes bearer tokens only, never cookies, so a foreign page cannot
    /// act with a signed-in person's rights; narrow it to the sponsor's tools where wanted.
    #[arg(
        long,
        env = "TRIALBRIDGE_CORS_ORIGINS",
        default_value = "*",
        global = true
    )]
    pub cors_origins: String,
    /// Load the MesemCart study definition at start-up (true/false).
    #[arg(
        long,
        env = "TRIALBRIDGE_LOAD_STUDY",
        default_value = "true",
        global = true
    )]
    pub load_study: String,
    /// Extension URL prefixes accepted besides the R4 core ones and the built-in domains
    /// (the study's, hl7.org, fhir.de, gematik), comma-separated; they add to those.
    #[arg(
        long,
        env = "TRIALBRIDGE_EXTENSION_DOMAINS",
        default_value = "",
        global = true
    )]
    pub extension_domains: String,
    /// `lenient` (as R4 says: an unknown extension is a warning and is stored as sent, an
    /// unknown modifierExtension an error) or `strict` (every unknown extension and example
    /// URL is an error).
    #[arg(
        long,
        env = "TRIALBRIDGE_EXTENSIONS",
        default_value = "lenient",
        global = true
    )]
    pub extensions: String,
    /// `local` (loopback only, tokens signed by a development key kept beside the database)
    /// or `production` (a JWKS is required).
    #[arg(
        long,
        env = "TRIALBRIDGE_PROFILE",
        default_value = "local",
        global = true
    )]
    pub profile: String,
    /// How bearer tokens are checked (JWKS, issuer, audience).
    #[command(flatten)]
    pub auth: trialbridge_auth::AuthArgs,
}

/// The issuer of the local profile's development tokens.
pub use trialbridge_auth::LOCAL_ISSUER;

pub use trialbridge_auth::AuthSource;

/// The data directory of a configuration: `--data-dir`, else the directory of the SQLite
/// file `--database-url` names, else `data`. Everything written by default lives there.
pub fn data_dir(a: &ServeArgs) -> std::path::PathBuf {
    match (&a.data_dir, &a.database_url) {
        (Some(d), _) => d.into(),
        (None, Some(url)) => trialbridge_storage::default_data_dir(url),
        (None, None) => "data".into(),
    }
}

impl ServeArgs {
    /// The database URL: as given (a relative SQLite path taken relative to `--data-dir` when
    /// that is given), else `sqlite://DATA_DIR/trialbridge.db`.
    pub fn database(&self) -> String {
        let Some(url) = &self.database_url else {
            return format!(
                "sqlite://{}",
                data_dir(self).join("trialbridge.db").display()
            );
        };
        match (&self.data_dir, url.strip_prefix("sqlite://")) {
            (Some(dir), Some(path))
                if !path.is_empty() && !path.starts_with('/') && !path.starts_with(':') =>
            {
                format!(
                    "sqlite://{}",
                    std::path::Path::new(dir).join(path).display()
                )
            }
            _ => url.clone(),
        }
    }
}

/// How tokens are checked for a configuration (see [`trialbridge_auth::Authenticator::open`]).
pub async fn auth(c: &ServeConfig) -> Result<trialbridge_auth::Authenticator, String> {
    trialbridge_auth::Authenticator::open(&c.auth, c.verifier_settings()).await
}

/// Extensions accepted by default besides the R4 core: the study's own canonical base, the
/// HL7 implementation guides (the schedule-of-activities IG of the study's PlanDefinitions,
/// US Core in the official examples), and the German base and ISiK profiles that site EHRs
/// send. Any other extension is refused until its domain is configured.
pub const DEFAULT_EXTENSION_DOMAINS: &str = "https://fhir.mesemcart-sponsor.example/,http://hl7.org/fhir/,http://fhir.de/,https://gematik.de/fhir/";

/// What `TRIALBRIDGE_EXTENSIONS` names.
pub fn extension_policy(v: &str) -> Result<trialbridge_validation::ExtensionPolicy, String> {
    match v.trim() {
        "lenient" | "" => Ok(trialbridge_validation::ExtensionPolicy::Lenient),
        "strict" => Ok(trialbridge_validation::ExtensionPolicy::Strict),
        other => Err(format!(
            "TRIALBRIDGE_EXTENSIONS / --extensions: '{other}' is not lenient or strict"
        )),
    }
}

impl ServeArgs {
    /// The validation options these arguments name (an unreadable extension policy counts
    /// as lenient here; `ServeConfig::from_args` reports it).
    pub fn validation(&self) -> trialbridge_validation::Options {
        let mut o = validation_options(&self.extension_domains);
        o.extensions = extension_policy(&self.extensions).unwrap_or_default();
        o
    }
}

/// Validation options for the built-in extension domains plus a comma-separated list of
/// more (as R4 says: unknown extensions are warnings).
pub fn validation_options(extension_domains: &str) -> trialbridge_validation::Options {
    trialbridge_validation::Options {
        extension_domains: DEFAULT_EXTENSION_DOMAINS
            .split(',')
            .chain(extension_domains.split(','))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect(),
        ..trialbridge_validation::Options::default()
    }
}

/// Checked configuration of `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Listen address of the gRPC change feed.
    pub grpc_listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Exports and the local development key.
    pub data_dir: std::path::PathBuf,
    /// Public base URL.
    pub base_url: Option<String>,
    /// Body limit.
    pub max_body_bytes: usize,
    /// How long one database read may run.
    pub statement_timeout: std::time::Duration,
    /// Bytes of the PostgreSQL read cache.
    pub read_cache_bytes: u64,
    /// Origins allowed to call from a browser (`*`: any).
    pub cors_origins: Vec<String>,
    /// Whether to load the study.
    pub load_study: bool,
    /// How payloads are validated.
    pub validation: trialbridge_validation::Options,
    /// Where token keys come from.
    pub auth: AuthSource,
    /// Expected `iss`.
    pub auth_issuer: String,
    /// Expected `aud`.
    pub auth_audience: String,
    /// The issuer's endpoints for SMART discovery.
    pub smart: SmartEndpoints,
}

impl ServeConfig {
    /// How the database is opened.
    pub fn store_options(&self) -> trialbridge_storage::StoreOptions {
        trialbridge_storage::StoreOptions {
            statement_timeout: self.statement_timeout,
            read_cache_bytes: self.read_cache_bytes,
        }
    }

    /// What a token must say to be accepted here (issuer, audience, 30 s clock skew).
    pub fn verifier_settings(&self) -> trialbridge_auth::VerifierSettings {
        trialbridge_auth::VerifierSettings {
            issuer: self.auth_issuer.clone(),
            audience: self.auth_audience.clone(),
            leeway_seconds: 30,
        }
    }

    /// Checks every value; returns all problems, one sentence each.
    pub fn from_args(a: ServeArgs) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let listen = a
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                problems.push(format!(
                    "TRIALBRIDGE_LISTEN / --listen: '{}' is not an address such as 127.0.0.1:8080",
                    a.listen
                ))
            })
            .ok();
        let grpc_listen = a
            .grpc_listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                problems.push(format!(
                    "TRIALBRIDGE_GRPC_LISTEN / --grpc-listen: '{}' is not an address such as 127.0.0.1:8082",
                    a.grpc_listen
                ))
            })
            .ok();
        let database_url = a.database();
        if trialbridge_storage::Backend::of(&database_url).is_err() {
            problems.push(format!("TRIALBRIDGE_DATABASE_URL / --database-url: '{}' is not supported (use sqlite://path or postgres://user@host:port/database)", trialbridge_storage::redacted_url(&database_url)));
        }
        if let Some(b) = &a.base_url {
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                problems.push(format!(
                    "TRIALBRIDGE_BASE_URL / --base-url: '{b}' is not an http(s) URL"
                ));
            }
        }
        let max_body_bytes = match a.max_body_bytes.parse::<usize>() {
            Ok(n) if n >= 1024 => Some(n),
            _ => {
                problems.push(format!("TRIALBRIDGE_MAX_BODY_BYTES / --max-body-bytes: '{}' is not a byte count of at least 1024", a.max_body_bytes));
                None
            }
        };
        let statement_timeout = match a.statement_timeout.trim_end_matches('s').parse::<f64>() {
            Ok(n) if n >= 0.001 && n.is_finite() => Some(std::time::Duration::from_secs_f64(n)),
            _ => {
                problems.push(format!("TRIALBRIDGE_STATEMENT_TIMEOUT / --statement-timeout: '{}' is not a number of seconds (30, 2.5)", a.statement_timeout));
                None
            }
        };
        let read_cache_bytes = match a.read_cache_mb.parse::<u64>() {
            Ok(n) if n <= 1 << 20 => Some(n << 20),
            _ => {
                problems.push(format!("TRIALBRIDGE_READ_CACHE_MB / --read-cache-mb: '{}' is not a number of mebibytes (64; 0 for none)", a.read_cache_mb));
                None
            }
        };
        let load_study = match a.load_study.as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            other => {
                problems.push(format!(
                    "TRIALBRIDGE_LOAD_STUDY / --load-study: '{other}' is not true or false"
                ));
                None
            }
        };
        if let Err(p) = extension_policy(&a.extensions) {
            problems.push(p);
        }
        let validation = a.validation();
        let auth = match (a.profile.as_str(), &a.auth.auth_jwks) {
            (_, Some(j)) => Some(AuthSource::Jwks(j.clone())),
            ("local", None) => Some(AuthSource::LocalKey(data_dir(&a))),
            ("production", None) => {
                problems.push("TRIALBRIDGE_AUTH_JWKS / --auth-jwks: the production profile needs the token issuer's JWKS (file or URL)".to_string());
                None
            }
            (other, _) => {
                problems.push(format!(
                    "TRIALBRIDGE_PROFILE / --profile: '{other}' is not local or production"
                ));
                None
            }
        };
        if a.profile == "local" {
            if let Some(l) = listen
                .filter(|l| !l.ip().is_loopback())
                .or(grpc_listen.filter(|l| !l.ip().is_loopback()))
            {
                problems.push(format!("TRIALBRIDGE_LISTEN / --listen: the local profile listens on loopback only, not {l}; set TRIALBRIDGE_PROFILE=production and TRIALBRIDGE_AUTH_JWKS to serve a network"));
            }
        }
        match (
            listen,
            grpc_listen,
            max_body_bytes,
            load_study,
            auth,
            statement_timeout,
            read_cache_bytes,
        ) {
            (
                Some(listen),
                Some(grpc_listen),
                Some(max_body_bytes),
                Some(load_study),
                Some(auth),
                Some(statement_timeout),
                Some(read_cache_bytes),
            ) if problems.is_empty() => Ok(Self {
                statement_timeout,
                read_cache_bytes,
                listen,
                grpc_listen,
                data_dir: data_dir(&a),
                database_url,
                base_url: a.base_url.map(|b| b.trim_end_matches('/').to_string()),
                cors_origins: a
                    .cors_origins
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
                max_body_bytes,
                validation,
                load_study,
                auth,
                auth_issuer: a.auth.auth_issuer.clone(),
                smart: SmartEndpoints {
                    issuer: a.auth.auth_issuer.clone(),
                    jwks_uri: a
                        .auth
                        .auth_jwks
                        .clone()
                        .filter(|j| j.starts_with("http://") || j.starts_with("https://")),
                    token: a.auth.auth_token_url.clone(),
                    authorize: a.auth.auth_authorize_url.clone(),
                },
                auth_audience: a.auth.auth_audience,
            }),
            _ => Err(problems),
        }
    }
}

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
    /// How payloads are validated.
    pub validation: trialbridge_validation::Options,
    /// Where `$export` jobs keep their state and files.
    pub export_dir: std::path::PathBuf,
    /// What SMART clients are told about the token issuer.
    pub smart: SmartEndpoints,
    /// Origins allowed to call from a browser (CORS; `*`: any; empty: none).
    pub cors_origins: Vec<String>,
}

/// The token issuer as SMART App Launch clients discover it (CapabilityStatement
/// `rest.security` and `/.well-known/smart-configuration`). trialbridge is a resource server:
/// the endpoints are the sponsor's identity provider's, from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmartEndpoints {
    /// `iss` of the tokens.
    pub issuer: String,
    /// The JWKS URL, when the keys come from one.
    pub jwks_uri: Option<String>,
    /// Token endpoint (`TRIALBRIDGE_AUTH_TOKEN_URL`).
    pub token: Option<String>,
    /// Authorization endpoint (`TRIALBRIDGE_AUTH_AUTHORIZE_URL`).
    pub authorize: Option<String>,
}

impl StoreConfig {
    /// Defaults for a base URL.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            max_body_bytes: 16 * 1024 * 1024,
            default_count: 20,
            max_count: 1000,
            validation: validation_options(DEFAULT_EXTENSION_DOMAINS),
            export_dir: "data/exports".into(),
            smart: SmartEndpoints {
                issuer: LOCAL_ISSUER.into(),
                ..SmartEndpoints::default()
            },
            cors_origins: vec!["*".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            listen: "127.0.0.1:8080".into(),
            grpc_listen: "127.0.0.1:8082".into(),
            database_url: Some("sqlite://data/x.db".into()),
            data_dir: None,
            base_url: None,
            max_body_bytes: "4096".into(),
            statement_timeout: "30".into(),
            read_cache_mb: "64".into(),
            cors_origins: "*".into(),
            load_study: "true".into(),
            extension_domains: String::new(),
            extensions: "lenient".into(),
            profile: "local".into(),
            auth: trialbridge_auth::AuthArgs::local(),
        }
    }

    #[test]
    fn production_needs_a_jwks_and_local_stays_on_loopback() {
        let prod = ServeArgs {
            profile: "production".into(),
            ..args()
        };
        let p = ServeConfig::from_args(prod).unwrap_err();
        assert!(p[0].contains("TRIALBRIDGE_AUTH_JWKS"), "{p:?}");
        let open = ServeArgs {
            listen: "0.0.0.0:8080".into(),
            ..args()
        };
        let p = ServeConfig::from_args(open).unwrap_err();
        assert!(p[0].contains("loopback"), "{p:?}");
        let c = ServeConfig::from_args(args()).unwrap();
        assert_eq!(c.auth, AuthSource::LocalKey("data".into()));
    }

    #[test]
    fn good_values_pass() {
        let c = ServeConfig::from_args(args()).unwrap();
        assert_eq!(c.max_body_bytes, 4096);
        assert_eq!(c.read_cache_bytes, 64 << 20);
        assert!(c.load_study);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let a = ServeArgs {
            listen: "nowhere".into(),
            grpc_listen: "127.0.0.1:8082".into(),
            database_url: Some("mysql://x".into()),
            data_dir: None,
            base_url: Some("ftp://x".into()),
            max_body_bytes: "-1".into(),
            statement_timeout: "soon".into(),
            read_cache_mb: "lots".into(),
            cors_origins: "*".into(),
            load_study: "maybe".into(),
            extension_domains: String::new(),
            extensions: "loose".into(),
            profile: "local".into(),
            auth: trialbridge_auth::AuthArgs::local(),
        };
        let problems = ServeConfig::from_args(a).unwrap_err();
        assert_eq!(problems.len(), 8, "{problems:#?}");
        assert!(problems
            .iter()
            .any(|p| p.contains("TRIALBRIDGE_READ_CACHE_MB")));
        assert!(problems[0].contains("TRIALBRIDGE_LISTEN"));
    }
}
