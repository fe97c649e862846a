//! Content negotiation: JSON only (`application/fhir+json`, `application/json`), `_format`,
//! `_pretty`, and the request body's `Content-Type` and size.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use trialbridge_fhir::IssueType;

use crate::error::ApiError;

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
pub fn negotiate(headers: &HeaderMap, query: &[(String, String)]) -> Result<Format, ApiError> {
    let mut f = Format::default();
    for (k, v) in query {
        match k.as_str() {
            "_format" if !is_json_media(v) => {
                return Err(ApiError::new(
                    StatusCode::NOT_ACCEPTABLE,
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
            return Err(ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
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
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
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
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                IssueType::NotSupported,
                format!("Content-Type '{ct}' is not supported; send application/fhir+json"),
            )
            .at("Content-Type"));
        }
    }
    let too_long = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
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
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            IssueType::Structure,
            format!("the request body could not be read: {e}"),
        )),
    }
}
