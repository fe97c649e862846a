//! Search handlers: type level (GET and `POST _search`), compartment and system level. The
//! search itself is `fhir::search`; AuditEvent searches are the monitor's (`trial::monitor`).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use trialbridge_fhir::IssueType;

use crate::error::{Status, StoreError};
use crate::fhir::{query_pairs, search, StoreState};
use crate::rest::extract::TypeName;
use crate::rest::negotiate::prefer;
use crate::rest::negotiate::{negotiate, Asked};
use crate::rest::respond::json_response;
use crate::security::Caller;

pub async fn type_search(
    State(s): State<StoreState>,
    caller: Caller,
    TypeName(rt): TypeName,
    a: Asked,
) -> Result<Response, StoreError> {
    if rt == "AuditEvent" {
        return crate::rest::monitor::audit_search(&s, &caller, &a.pairs).await;
    }
    let bundle = search::type_search(&s, &caller, rt, a.pairs, a.prefer.strict).await?;
    Ok(json_response(StatusCode::OK, bundle, a.fmt))
}

pub async fn type_search_post(
    State(s): State<StoreState>,
    caller: Caller,
    TypeName(rt): TypeName,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, StoreError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(StoreError::new(
            Status::UnsupportedMediaType,
            IssueType::NotSupported,
            "_search takes an application/x-www-form-urlencoded body",
        )
        .at("Content-Type"));
    }
    let bytes = http_body_util::Limited::new(body, s.config.max_body_bytes)
        .collect()
        .await
        .map_err(|_| {
            StoreError::new(
                Status::PayloadTooLarge,
                IssueType::TooLong,
                "the search form is too large",
            )
            .at("Content-Length")
        })?
        .to_bytes();
    let mut pairs = query_pairs(q.as_deref());
    pairs.extend(url::form_urlencoded::parse(&bytes).into_owned());
    let fmt = negotiate(&headers, &pairs)?;
    let strict = prefer(&headers).strict;
    let bundle = search::type_search(&s, &caller, rt, pairs, strict).await?;
    Ok(json_response(StatusCode::OK, bundle, fmt))
}

/// `GET /fhir/Patient/{id}/Observation`: the Observations in that Patient's compartment.
pub async fn compartment_search(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<(String, String, String)>, PathRejection>,
    a: Asked,
) -> Result<Response, StoreError> {
    let Path((ct, id, t)) = path?;
    let strict = a.prefer.strict;
    let bundle = search::compartment_search(&s, &caller, (&ct, &id, &t), a.pairs, strict).await?;
    Ok(json_response(StatusCode::OK, bundle, a.fmt))
}

/// `GET /fhir?_type=Patient,Observation&...`.
pub async fn system_search(
    State(s): State<StoreState>,
    caller: Caller,
    a: Asked,
) -> Result<Response, StoreError> {
    let bundle = search::system_search(&s, &caller, a.pairs, a.prefer.strict).await?;
    Ok(json_response(StatusCode::OK, bundle, a.fmt))
}
