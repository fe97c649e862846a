//! Routes and handlers: the only module that knows HTTP.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tower_http::catch_panic::CatchPanicLayer;
use trialbridge_auth::Interaction;
use trialbridge_fhir::id::parse_etag_version;
use trialbridge_fhir::search::SearchRequest;
use trialbridge_fhir::{instant, IssueType, OperationOutcome, OutcomeIssue};
use trialbridge_storage::StoredVersion;

use crate::access::{Audited, Caller};
use crate::audit::write_audited;
use crate::error::{outcome_response, ApiError};
use crate::interactions::{self, checked_id, incoming_from_bytes, known_type, Written};
use crate::negotiate::{negotiate, read_body, Format};
use crate::{bundle, capability, export, history, monitor, search, validate, StoreState};

pub fn routes(state: StoreState) -> Router {
    Router::new()
        .route("/fhir/metadata", get(capability::metadata))
        .route("/fhir", post(bundle::process).get(search::system_search))
        .route("/fhir/", post(bundle::process).get(search::system_search))
        .route("/fhir/_history", get(history::system))
        .route(
            "/fhir/{rtype}",
            get(search::type_search)
                .post(create)
                .put(conditional_update)
                .delete(conditional_delete),
        )
        .route("/fhir/$export", get(export::system))
        .route("/fhir/{rtype}/$export", get(type_export))
        .route("/fhir/Group/{id}/$export", get(export::group))
        .route(
            "/fhir/$export-status/{job}",
            get(export::status).delete(export::cancel),
        )
        .route("/fhir/$export-file/{job}/{file}", get(export::file))
        .route("/fhir/{rtype}/_search", post(search::type_search_post))
        .route("/fhir/{rtype}/$validate", post(validate::type_level))
        .route(
            "/fhir/{rtype}/{id}/$validate",
            post(validate::instance_level).get(validate::instance_level),
        )
        .route("/fhir/{rtype}/_history", get(history::of_type))
        .route("/fhir/{rtype}/{id}/$sdv", get(monitor::sdv))
        .route("/fhir/{rtype}/{id}/$diff", get(monitor::version_diff))
        .route("/fhir/{rtype}/{id}/$verify", post(monitor::verify))
        .route("/fhir/{rtype}/{id}", get(read).put(update).delete(delete))
        .route("/fhir/{rtype}/{id}/_history", get(history::instance))
        .route("/fhir/{rtype}/{id}/_history/{vid}", get(vread))
        .route(
            "/fhir/{rtype}/{id}/{member}",
            get(search::compartment_search),
        )
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(crate::openapi::document))
        .route("/metrics", get(crate::metrics::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(crate::metrics::record))
        .layer(CatchPanicLayer::custom(panicked))
        .with_state(state)
}

/// `GET [base]/[type]/$export`: Patient-level export (Group-level has its own route).
async fn type_export(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let Path(t) = path?;
    if t != "Patient" {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotSupported,
            format!("$export is served at the system level and for Patient, not for {t}"),
        ));
    }
    export::kick_off(&s, &caller, &headers, q.as_deref(), true, None).await
}

/// Marks a response as audited inside its write transaction.
pub fn audited(mut r: Response) -> Response {
    r.extensions_mut().insert(Audited);
    r
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            IssueType::Value,
            format!("the URL path cannot be read: {e}"),
        )
    }
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    outcome_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &OperationOutcome::single(OutcomeIssue::error(
            IssueType::Exception,
            "internal error while processing the request",
        )),
    )
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        IssueType::NotFound,
        format!("no endpoint at {}", uri.path()),
    )
    .into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueType::NotSupported,
        format!("{method} is not supported on {}", uri.path()),
    )
    .into_response()
}

async fn readyz(State(s): State<StoreState>) -> Response {
    if s.store.is_ready().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueType::Exception,
            "the trial database does not answer",
        )
        .into_response()
    }
}

/// The decoded query string, in order, repeats kept.
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
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

/// An absolute paging link (`self`, `next`): the base, the path, the parameters that were
/// understood, and the cursor. An empty path is the system level (`/fhir?...`).
pub fn page_link(
    base: &str,
    path: &str,
    kept: &[&(String, String)],
    cursor: Option<&str>,
) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in kept {
        ser.append_pair(k, v);
    }
    if let Some(c) = cursor {
        ser.append_pair("_cursor", c);
    }
    let qs = ser.finish();
    let at = if path.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{path}")
    };
    if qs.is_empty() {
        at
    } else {
        format!("{at}?{qs}")
    }
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
}

/// `Type/id/_history/n` of a version.
pub fn version_path(v: &StoredVersion) -> String {
    format!("{}/{}/_history/{}", v.resource_type, v.id, v.version)
}

/// The response to a create, update or delete.
pub fn written_response(s: &StoreState, w: Written, fmt: Format, pref: Prefer) -> Response {
    let Some(v) = w.version else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let mut r = if w.status == StatusCode::NO_CONTENT {
        StatusCode::NO_CONTENT.into_response()
    } else {
        match pref.ret {
            ReturnPreference::Minimal => w.status.into_response(),
            ReturnPreference::Representation => {
                json_response(w.status, v.body.clone().unwrap_or_default(), fmt)
            }
            ReturnPreference::OperationOutcome => {
                let what = if w.status == StatusCode::CREATED {
                    "created"
                } else {
                    "updated"
                };
                let oo = OperationOutcome::single(OutcomeIssue::information(
                    IssueType::Informational,
                    format!("{} {what}", version_path(&v)),
                ));
                json_response(w.status, oo.to_json().to_string(), fmt)
            }
        }
    };
    version_headers(&mut r, &v);
    if w.status == StatusCode::CREATED || w.status == StatusCode::OK {
        if let Ok(loc) =
            HeaderValue::from_str(&format!("{}/{}", s.config.base_url, version_path(&v)))
        {
            if w.status == StatusCode::CREATED {
                r.headers_mut().insert(header::LOCATION, loc.clone());
            }
            r.headers_mut().insert(header::CONTENT_LOCATION, loc);
        }
    }
    r
}

/// A read result: 404, 410, or the version.
pub fn found(
    resource_type: &str,
    id: &str,
    v: Option<StoredVersion>,
) -> Result<StoredVersion, ApiError> {
    match v {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            format!("{resource_type}/{id} is not known"),
        )
        .at(format!("{resource_type}.id"))),
        Some(v) if v.deleted => Err(ApiError::new(
            StatusCode::GONE,
            IssueType::Deleted,
            format!("{resource_type}/{id} was deleted (version {})", v.version),
        )
        .at(format!("{resource_type}.id"))),
        Some(v) => Ok(v),
    }
}

/// Parses conditional criteria (`If-None-Exist`, conditional update and delete). Unknown
/// parameters are always errors here: ignoring one would widen the match.
pub fn conditional_criteria(
    resource_type: &str,
    query: &str,
    what: &str,
) -> Result<SearchRequest, ApiError> {
    let query = query.split_once('?').map_or(query, |(_, q)| q);
    let pairs = query_pairs(Some(query));
    trialbridge_fhir::search::parse(resource_type, &pairs, true)
        .map_err(|issue| ApiError::from_issue(StatusCode::BAD_REQUEST, issue).at(what.to_string()))
}

fn if_match(headers: &HeaderMap, resource_type: &str) -> Result<Option<i64>, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => parse_etag_version(v.to_str().unwrap_or(""))
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    IssueType::Value,
                    "If-Match must be a version ETag such as W/\"3\"",
                )
                .at(format!("{resource_type}.meta.versionId"))
            }),
    }
}

async fn read(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let Path((t, id)) = path?;
    if t == "AuditEvent" {
        return crate::monitor::audit_event(&s, &caller, &id).await;
    }
    let rt = known_type(&t)?;
    caller.require(rt, Interaction::Read)?;
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    checked_id(rt, &id)?;
    let v = found(rt, &id, s.store.read(&caller.ctx, rt, &id).await?)?;
    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        if parse_etag_version(inm.to_str().unwrap_or("")) == Some(v.version) {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            version_headers(&mut r, &v);
            return Ok(r);
        }
    }
    if let Some(ims) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|h| h.to_str().ok())
    {
        if let Some(since) = instant::parse_http_date(ims).or_else(|| instant::parse(ims)) {
            if v.last_updated_us.div_euclid(1_000_000) <= since.unix_timestamp() {
                let mut r = StatusCode::NOT_MODIFIED.into_response();
                version_headers(&mut r, &v);
                return Ok(r);
            }
        }
    }
    let mut r = json_response(StatusCode::OK, v.body.clone().unwrap_or_default(), fmt);
    version_headers(&mut r, &v);
    Ok(r)
}

async fn vread(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let Path((t, id, vid)) = path?;
    let rt = known_type(&t)?;
    caller.require(rt, Interaction::Read)?;
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    checked_id(rt, &id)?;
    let version = vid.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            IssueType::Value,
            format!("'{vid}' is not a version id"),
        )
        .at(format!("{rt}.meta.versionId"))
    })?;
    let v = s.store.vread(&caller.ctx, rt, &id, version).await?;
    let v = match v {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                IssueType::NotFound,
                format!("{rt}/{id} has no version {version}"),
            )
            .at(format!("{rt}.meta.versionId")))
        }
        Some(v) if v.deleted => {
            return Err(ApiError::new(
                StatusCode::GONE,
                IssueType::Deleted,
                format!("version {version} of {rt}/{id} is a deletion"),
            )
            .at(format!("{rt}.meta.versionId")))
        }
        Some(v) => v,
    };
    let mut r = json_response(StatusCode::OK, v.body.clone().unwrap_or_default(), fmt);
    version_headers(&mut r, &v);
    Ok(r)
}

async fn create(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(t) = path?;
    let rt = known_type(&t)?;
    caller.require(rt, Interaction::Create)?;
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let res = incoming_from_bytes(rt, &bytes, &s.config.validation)?;
    let ine = match headers.get("if-none-exist") {
        Some(h) => Some(conditional_criteria(
            rt,
            h.to_str().unwrap_or(""),
            "If-None-Exist",
        )?),
        None => None,
    };
    if ine.is_some() {
        caller.require(rt, Interaction::Search)?;
    }
    let id = uuid::Uuid::now_v7().to_string();
    let c = caller.clone();
    let w = write_audited(&*s.store, &caller, "create", move |txn| {
        Box::pin(async move { interactions::create(txn, &c, &res, &id, ine.as_ref()).await })
    })
    .await?;
    Ok(audited(written_response(&s, w, fmt, prefer(&headers))))
}

async fn update(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((t, id)) = path?;
    let rt = known_type(&t)?;
    caller.require(rt, Interaction::Update)?;
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    checked_id(rt, &id)?;
    let expected = if_match(&headers, rt)?;
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let res = incoming_from_bytes(rt, &bytes, &s.config.validation)?;
    let c = caller.clone();
    let w = write_audited(&*s.store, &caller, "update", move |txn| {
        Box::pin(async move { interactions::update(txn, &c, &res, &id, expected).await })
    })
    .await?;
    Ok(audited(written_response(&s, w, fmt, prefer(&headers))))
}

async fn conditional_update(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(t) = path?;
    let rt = known_type(&t)?;
    caller.require(rt, Interaction::Update)?;
    caller.require(rt, Interaction::Search)?;
    let pairs = query_pairs(q.as_deref());
    let fmt = negotiate(&headers, &pairs)?;
    let criteria = conditional_criteria(rt, q.as_deref().unwrap_or(""), "conditional update")?;
    let expected = if_match(&headers, rt)?;
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let res = incoming_from_bytes(rt, &bytes, &s.config.validation)?;
    let c = caller.clone();
    let w = write_audited(&*s.store, &caller, "update", move |txn| {
        Box::pin(async move { conditional_update_in(txn, &c, res, &criteria, expected).await })
    })
    .await?;
    Ok(audited(written_response(&s, w, fmt, prefer(&headers))))
}

/// Conditional update: no match creates (with the body's id or a new one), one match updates
/// it, several are a 412.
pub async fn conditional_update_in(
    txn: &mut dyn trialbridge_storage::WriteTxn,
    caller: &Caller,
    mut res: interactions::Incoming,
    criteria: &SearchRequest,
    expected: Option<i64>,
) -> Result<Written, ApiError> {
    let rt = res.resource_type;
    let body_id = res
        .value
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string);
    match interactions::match_one(txn, caller, rt, criteria, "conditional update").await? {
        Some(found) => {
            if body_id.as_deref().is_some_and(|b| b != found) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    IssueType::Invalid,
                    format!("the resource id differs from the matched {rt}/{found}"),
                )
                .at(format!("{rt}.id")));
            }
            res.set_id(&found);
            interactions::update(txn, caller, &res, &found, expected).await
        }
        None => {
            let id = body_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            res.set_id(&id);
            interactions::update(txn, caller, &res, &id, expected).await
        }
    }
}

async fn delete(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((t, id)) = path?;
    let rt = known_type(&t)?;
    caller.require(rt, Interaction::Delete)?;
    checked_id(rt, &id)?;
    let expected = if_match(&headers, rt)?;
    let c = caller.clone();
    let w = write_audited(&*s.store, &caller, "delete", move |txn| {
        Box::pin(async move { interactions::delete(txn, &c, rt, &id, expected).await })
    })
    .await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(v) = &w.version {
        version_headers(&mut r, v);
    }
    Ok(audited(r))
}

async fn conditional_delete(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let Path(t) = path?;
    let rt = known_type(&t)?;
    caller.require(rt, Interaction::Delete)?;
    caller.require(rt, Interaction::Search)?;
    let criteria = conditional_criteria(rt, q.as_deref().unwrap_or(""), "conditional delete")?;
    let c = caller.clone();
    write_audited(&*s.store, &caller, "delete", move |txn| {
        Box::pin(async move {
            match interactions::match_one(txn, &c, rt, &criteria, "conditional delete").await? {
                Some(id) => interactions::delete(txn, &c, rt, &id, None).await,
                None => Ok(Written {
                    status: StatusCode::NO_CONTENT,
                    version: None,
                    changed: false,
                }),
            }
        })
    })
    .await?;
    Ok(audited(StatusCode::NO_CONTENT.into_response()))
}
