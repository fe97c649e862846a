//! Content negotiation: JSON only (`application/fhir+json`, `application/json`), `_format`,
//! `_pretty`, and the request body's `Content-Type` and size.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::BodyExt;
use trialbridge_fhir::IssueType;

use crate::error::{Status, StoreError};
use crate::fhir::query_pairs;

/// How the response is to be written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Format {
    /// `_pretty=true`.
    pub pretty: bool,
}

fn is_json_media(m: &str) -> bool {
    let base = m
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        base.as_str(),
        "application/fhir+json"
            | "application/json"
            | "json"
            | "application/json+fhir"
            | "*/*"
            | "application/*"
            | ""
    )
}

/// The FHIR version this server speaks, as the `fhirVersion` media-type parameter names it.
const FHIR_VERSION: &str = "4.0";

/// The `fhirVersion` parameter of a media type, if any (`application/fhir+json;
/// fhirVersion=4.3` -> `4.3`).
fn fhir_version(media: &str) -> Option<&str> {
    media.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("fhirVersion")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// Whether a `fhirVersion` names the version served here (`4.0`, or a patch release of it).
fn serves(version: &str) -> bool {
    version == FHIR_VERSION || version.starts_with("4.0.")
}

/// What to tell a client that asked for another FHIR version.
fn other_version(asked: &str) -> String {
    format!(
        "this server serves FHIR {FHIR_VERSION} (R4) only, not fhirVersion={asked}: ask for application/fhir+json without a fhirVersion or with fhirVersion={FHIR_VERSION}"
    )
}

/// A media range this server can answer: JSON, and no other FHIR version (R4, http.html:
/// a server answers a version it does not serve with 406).
fn acceptable(m: &str) -> bool {
    is_json_media(m) && fhir_version(m).is_none_or(serves)
}

/// Checks `Accept` and `_format`; 406 if the client wants something other than JSON, or
/// another FHIR version.
pub fn negotiate(headers: &HeaderMap, query: &[(String, String)]) -> Result<Format, StoreError> {
    let mut f = Format::default();
    for (k, v) in query {
        match k.as_str() {
            "_format" if !is_json_media(v) => {
                return Err(StoreError::new(
                    Status::NotAcceptable,
                    IssueType::NotSupported,
                    format!(
                        "_format '{v}' is not supported; this server speaks application/fhir+json"
                    ),
                )
                .at("_format"));
            }
            "_format" if !acceptable(v) => {
                let asked = fhir_version(v).unwrap_or_default();
                return Err(StoreError::new(
                    Status::NotAcceptable,
                    IssueType::NotSupported,
                    other_version(asked),
                )
                .at("_format"));
            }
            "_pretty" => f.pretty = v == "true",
            _ => {}
        }
    }
    if query.iter().any(|(k, _)| k == "_format") {
        return Ok(f);
    }
    if let Some(accept) = headers.get(header::ACCEPT) {
        let accept = accept.to_str().unwrap_or("");
        if !accept.split(',').any(acceptable) {
            if let Some(asked) = accept.split(',').find_map(fhir_version) {
                return Err(StoreError::new(
                    Status::NotAcceptable,
                    IssueType::NotSupported,
                    other_version(asked),
                )
                .at("Accept"));
            }
            return Err(StoreError::new(
                Status::NotAcceptable,
                IssueType::NotSupported,
                format!(
                    "Accept '{accept}' cannot be served; this server speaks application/fhir+json"
                ),
            )
            .at("Accept"));
        }
    }
    Ok(f)
}

/// 415 when the body's `Content-Type` names another FHIR version than the one served here.
pub fn body_version(headers: &HeaderMap) -> Result<(), StoreError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match fhir_version(ct) {
        Some(v) if !serves(v) => Err(StoreError::new(
            Status::UnsupportedMediaType,
            IssueType::NotSupported,
            other_version(v),
        )
        .at("Content-Type")),
        _ => Ok(()),
    }
}

/// Checks the body's `Content-Type` (415 unless JSON of the FHIR version served here) and
/// reads it within `limit` (413).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, StoreError> {
    body_version(headers)?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("?");
        let base = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !matches!(
            base.as_str(),
            "application/fhir+json" | "application/json" | "application/json+fhir"
        ) {
            return Err(StoreError::new(
                Status::UnsupportedMediaType,
                IssueType::NotSupported,
                format!("Content-Type '{ct}' is not supported; send application/fhir+json"),
            )
            .at("Content-Type"));
        }
    }
    read_bounded(headers, body, limit).await
}

/// Reads a body of any media type within `limit` bytes (a PATCH checks its own media types).
pub async fn read_bounded(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, StoreError> {
    let too_long = || {
        StoreError::new(
            Status::PayloadTooLarge,
            IssueType::TooLong,
            format!("the request body exceeds the limit of {limit} bytes"),
        )
        .at("Content-Length")
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_long());
        }
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_long())
        }
        Err(e) => Err(StoreError::new(
            Status::BadRequest,
            IssueType::Structure,
            format!("the request body could not be read: {e}"),
        )),
    }
}

/// What the `Prefer` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    /// The resource (default).
    #[default]
    Representation,
    /// No body.
    Minimal,
    /// An OperationOutcome.
    OperationOutcome,
}

/// The parsed `Prefer` header.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefer {
    /// `return=`.
    pub ret: ReturnPreference,
    /// `handling=strict`.
    pub strict: bool,
}

/// Reads `Prefer`.
pub fn prefer(headers: &HeaderMap) -> Prefer {
    let mut p = Prefer::default();
    for v in headers.get_all("prefer") {
        for token in v.to_str().unwrap_or("").split([',', ';']) {
            match token.trim().replace(' ', "").as_str() {
                "return=minimal" => p.ret = ReturnPreference::Minimal,
                "return=representation" => p.ret = ReturnPreference::Representation,
                "return=OperationOutcome" => p.ret = ReturnPreference::OperationOutcome,
                "handling=strict" => p.strict = true,
                "handling=lenient" => p.strict = false,
                _ => {}
            }
        }
    }
    p
}

/// What a request asks for beside its path: the query parameters (decoded, in order), the
/// response format (406 unless JSON) and the `Prefer` header, read once for every handler.
pub struct Asked {
    /// The query string's parameters.
    pub pairs: Vec<(String, String)>,
    /// How to write the answer.
    pub fmt: Format,
    /// `Prefer: return=` and `handling=`.
    pub prefer: Prefer,
}

impl<S: Send + Sync> FromRequestParts<S> for Asked {
    type Rejection = StoreError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, StoreError> {
        let pairs = query_pairs(parts.uri.query());
        let fmt = negotiate(&parts.headers, &pairs)?;
        Ok(Self {
            pairs,
            fmt,
            prefer: prefer(&parts.headers),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn another_fhir_version_is_not_acceptable() {
        assert!(negotiate(&accept("application/fhir+json; fhirVersion=4.0"), &[]).is_ok());
        assert!(negotiate(&accept("application/fhir+json;fhirVersion=4.0.1"), &[]).is_ok());
        assert!(negotiate(&accept("application/fhir+json"), &[]).is_ok());
        // One acceptable range is enough.
        assert!(negotiate(
            &accept(
                "application/fhir+json; fhirVersion=4.3, application/fhir+json; fhirVersion=4.0"
            ),
            &[]
        )
        .is_ok());
        let e = negotiate(&accept("application/fhir+json; fhirVersion=4.3"), &[]).unwrap_err();
        assert_eq!(e.status(), Status::NotAcceptable);
        let text = format!("{:?}", e.outcome());
        assert!(
            text.contains("fhirVersion=4.3") && text.contains("Accept"),
            "{text}"
        );
        let q = [(
            "_format".to_string(),
            "application/fhir+json; fhirVersion=5.0".to_string(),
        )];
        assert!(negotiate(&HeaderMap::new(), &q).is_err());
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json; fhirVersion=4.3"),
        );
        assert_eq!(
            body_version(&h).unwrap_err().status(),
            Status::UnsupportedMediaType
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json; fhirVersion=4.0"),
        );
        assert!(body_version(&h).is_ok());
    }
}
