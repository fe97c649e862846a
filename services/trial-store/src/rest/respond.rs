//! Shaping answers: JSON bodies (pretty on request), `ETag` and `Last-Modified`, the answer
//! to a create, update or delete as `Prefer: return=` asks, and the `Prefer` header itself.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use trialbridge_fhir::{instant, IssueType, OperationOutcome, OutcomeIssue};
use trialbridge_storage::StoredVersion;

use crate::error::Status;
use crate::fhir::interactions::Written;
use crate::fhir::{version_path, StoreState};
use crate::rest::negotiate::{Format, Prefer, ReturnPreference};

/// The HTTP status of a FHIR status.
pub fn http_status(s: Status) -> StatusCode {
    StatusCode::from_u16(s.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A JSON body, pretty-printed on request.
pub fn json_response(status: StatusCode, body: String, fmt: Format) -> Response {
    let body = if fmt.pretty {
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(body)
    } else {
        body
    };
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    r
}

fn http_date(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(us.div_euclid(1_000_000))
        .map(instant::format_http_date)
        .unwrap_or_default()
}

/// `ETag` and `Last-Modified` of a version.
pub fn version_headers(r: &mut Response, v: &StoredVersion) {
    let h = r.headers_mut();
    if let Ok(e) = HeaderValue::from_str(&format!("W/\"{}\"", v.version)) {
        h.insert(header::ETAG, e);
    }
    if let Ok(d) = HeaderValue::from_str(&http_date(v.last_updated_us)) {
        h.insert(header::LAST_MODIFIED, d);
    }
    if let Some(site) = &v.site {
        r.extensions_mut()
            .insert(crate::rest::access::DataSite(site.clone()));
    }
}

/// The response to a create, update or delete.
pub fn written_response(s: &StoreState, w: Written, fmt: Format, pref: Prefer) -> Response {
    let Some(v) = w.version else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let status = http_status(w.status);
    let mut r = if w.status == Status::NoContent {
        StatusCode::NO_CONTENT.into_response()
    } else {
        match pref.ret {
            ReturnPreference::Minimal => status.into_response(),
            ReturnPreference::Representation => {
                json_response(status, v.body.clone().unwrap_or_default(), fmt)
            }
            ReturnPreference::OperationOutcome => {
                let what = if w.status == Status::Created {
                    "created"
                } else {
                    "updated"
                };
                let oo = OperationOutcome::single(OutcomeIssue::information(
                    IssueType::Informational,
                    format!("{} {what}", version_path(&v)),
                ));
                json_response(status, oo.to_json().to_string(), fmt)
            }
        }
    };
    version_headers(&mut r, &v);
    if w.status == Status::Created || w.status == Status::Ok {
        if let Ok(loc) =
            HeaderValue::from_str(&format!("{}/{}", s.config.base_url, version_path(&v)))
        {
            if w.status == Status::Created {
                r.headers_mut().insert(header::LOCATION, loc.clone());
            }
            r.headers_mut().insert(header::CONTENT_LOCATION, loc);
        }
    }
    r
}
