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

/// Checks `Accept` and `_format`; 406 if the client wants something other than JSON.
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
            "_pretty" => f.pretty = v == "true",
            _ => {}
        }
    }
    if query.iter().any(|(k, _)| k == "_format") {
        return Ok(f);
    }
    if let Some(accept) = headers.get(header::ACCEPT) {
        let accept = accept.to_str().unwrap_or("");
        if !accept.split(',').any(is_json_media) {
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

/// Checks the body's `Content-Type` (415 unless JSON) and reads it within `limit` (413).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, StoreError> {
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
