//! The gateway's HTTP API: `POST /hl7v2` for sites that cannot do MLLP, the key list
//! (`/enrolments`: it maps MRNs to subject ids and never leaves the site), the message list
//! (`/messages`: search, one message with its fields labelled beside its FHIR and ACK), the
//! dead-letter queue (`/dead-letters`: list, inspect, replay, discard), the gateway's audit log
//! (`/audit`), status, metrics and health; and the integrator console that uses them (`/app`).
//! Who may call what is `access`'s job.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::access::{problem, ApiCaller, Guard};
use crate::db::{Fact, SubjectFacts};
use crate::Gateway;

/// The id of a message row in a path (`/messages/{id}`, `/dead-letters/{id}`); anything but
/// a number is a 400 OperationOutcome naming it.
pub struct MessageId(i64);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for MessageId {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match Path::<i64>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(MessageId(id)),
            Err(_) => Err(problem(
                StatusCode::BAD_REQUEST,
                "the message id in the path is a number (the id of /messages or /dead-letters)",
            )),
        }
    }
}

/// The header that carries the reason for a key-list or dead-letter decision.
pub const REASON_HEADER: &str = "x-reason-for-change";

/// The gateway's routes, answering to the Host values `hosts`.
pub fn router(gateway: Gateway, hosts: Vec<String>) -> Router {
    let guard = Guard {
        gateway: gateway.clone(),
        hosts: Arc::new(hosts),
    };
    Router::new()
        .route("/hl7v2", post(hl7v2))
        .route("/enrolments", post(enrol).get(enrolments).delete(unenrol))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/{id}", get(dead_letter).delete(discard))
        .route("/dead-letters/{id}/replay", post(replay))
        .route("/messages", get(messages))
        .route("/messages/{id}", get(message))
        .route("/audit", get(audit))
        .route(
            "/app",
            get(|| async { axum::response::Redirect::to("/app/console") }),
        )
        .route("/app/settings.json", get(console_settings))
        .route("/app/{file}", get(console_file))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::access::check,
        ))
        .with_state(gateway)
}

fn failed(e: crate::db::DbError) -> Response {
    tracing::error!(error = %e, "gateway database failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the gateway's database cannot answer now; try again",
    )
}

/// The reason header, required for decisions about the key list and dead letters.
fn reason(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(String::from)
}

fn no_reason() -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "this decision needs a reason: send it in the X-Reason-For-Change header",
    )
}

async fn hl7v2(State(g): State<Gateway>, body: Bytes) -> Response {
    let text = g
        .receive_frame(&body)
        .await
        .unwrap_or_default()
        .replace('\r', "\r\n");
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "x-application/hl7-v2+er7; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A subject id of this site (`MC-01-001` for `site-01`), checked byte by byte.
fn valid_subject(subject: &str, site: &str) -> bool {
    let s = subject.as_bytes();
    let site_no = site.as_bytes().get(5..).unwrap_or_default();
    s.len() == 9
        && s.starts_with(b"MC-")
        && &s[3..5] == site_no
        && s[5] == b'-'
        && s[6..].iter().all(u8::is_ascii_digit)
}

/// An enrolment request: `{subjectId, identifiers: [{authority, value}], gender?, birthYear?}`
/// (or `mrn` + `authority` for one identifier). Every problem is named with its element.
struct EnrolRequest {
    subject: String,
    identifiers: Vec<(String, String)>,
    facts: SubjectFacts,
}

fn enrol_request(body: &[u8], site: &str) -> Result<EnrolRequest, String> {
    let body: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let text = |v: &Value, name: &str| -> Result<Option<String>, String> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(format!("{name} must be a string")),
        }
    };
    let subject = text(&body, "subjectId")?.unwrap_or_default();
    if !valid_subject(&subject, site) {
        let shown: String = subject.chars().take(40).collect();
        let n = site.get(5..).unwrap_or("NN");
        return Err(format!(
            "subjectId '{shown}' is not a subject id of {site} (MC-{n}-NNN)"
        ));
    }
    let mut identifiers = Vec::new();
    match body.get("identifiers") {
        Some(Value::Array(list)) => {
            for (i, item) in list.iter().enumerate() {
                let authority = text(item, "authority")
                    .map_err(|e| format!("identifiers[{i}].{e}"))?
                    .unwrap_or_default();
                let value = text(item, "value")
                    .map_err(|e| format!("identifiers[{i}].{e}"))?
                    .unwrap_or_default();
                if value.is_empty() {
                    return Err(format!("identifiers[{i}].value (the MRN) is required"));
                }
                if authority.is_empty() {
                    return Err(format!("identifiers[{i}].authority is required: an MRN is matched together with its assigning authority (PID-3.4), never alone"));
                }
                identifiers.push((authority, value));
            }
        }
        Some(_) => return Err("identifiers must be a list of {authority, value}".into()),
        None => {
            let mrn = text(&body, "mrn")?.unwrap_or_default();
            let authority = text(&body, "authority")?.unwrap_or_default();
            if mrn.is_empty() {
                return Err("an enrolment needs the patient's MRN (mrn and authority, or identifiers [{authority, value}])".into());
            }
            if authority.is_empty() {
                return Err("authority is required: an MRN is matched together with its assigning authority (PID-3.4), never alone".into());
            }
            identifiers.push((authority, mrn));
        }
    }
    if identifiers.is_empty() {
        return Err("identifiers is empty: an enrolment needs at least one MRN".into());
    }
    let gender = match text(&body, "gender")? {
        None => Fact::Keep,
        Some(g) if matches!(g.as_str(), "male" | "female" | "other" | "unknown") => Fact::Set(g),
        Some(_) => return Err("gender is male, female, other or unknown".into()),
    };
    let birth_year = match body.get("birthYear") {
        None | Some(Value::Null) => Fact::Keep,
        Some(y) => {
            let y = y
                .as_u64()
                .map(|n| n.to_string())
                .or_else(|| y.as_str().map(String::from))
                .unwrap_or_default();
            if y.len() != 4 || !y.bytes().all(|b| b.is_ascii_digit()) {
                return Err(
                    "birthYear is a four-digit year (the full date never leaves the site)".into(),
                );
            }
            Fact::Set(y)
        }
    };
    Ok(EnrolRequest {
        subject,
        identifiers,
        facts: SubjectFacts { gender, birth_year },
    })
}

async fn enrol(
    State(g): State<Gateway>,
    Extension(caller): Extension<ApiCaller>,
    body: Bytes,
) -> Response {
    let req = match enrol_request(&body, &g.config.site) {
        Ok(r) => r,
        Err(why) => return problem(StatusCode::BAD_REQUEST, why),
    };
    match g
        .enrol(req.identifiers, &req.subject, req.facts, &caller.subject)
        .await
    {
        Ok(Ok(who)) => (
            StatusCode::CREATED,
            Json(json!({"subjectId": who.subject_id, "patient": format!("Patient/{}", who.patient_id), "study": format!("ResearchStudy/{}", who.site_study)})),
        )
            .into_response(),
        Ok(Err(conflict)) => problem(StatusCode::CONFLICT, conflict.to_string()),
        Err(e) => failed(e),
    }
}

#[derive(serde::Deserialize)]
struct KeyQuery {
    authority: Option<String>,
    mrn: Option<String>,
}

async fn unenrol(
    State(g): State<Gateway>,
    Extension(caller): Extension<ApiCaller>,
    headers: HeaderMap,
    Query(q): Query<KeyQuery>,
) -> Response {
    let (Some(authority), Some(mrn)) = (q.authority, q.mrn) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "name the key-list entry: DELETE /enrolments?authority=...&mrn=...",
        );
    };
    let Some(why) = reason(&headers) else {
        return no_reason();
    };
    match g
        .db
        .unenrol(authority, mrn, caller.subject, why, crate::now_instant())
        .await
    {
        Ok(Some(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "no such entry in the key list"),
        Err(e) => failed(e),
    }
}

async fn enrolments(State(g): State<Gateway>, Extension(caller): Extension<ApiCaller>) -> Response {
    let rows = match g.db.key_list().await {
        Ok(rows) => rows,
        Err(e) => return failed(e),
    };
    if let Err(e) =
        g.db.audit(
            caller.subject,
            "read-key-list",
            json!({"entries": rows.len()}),
        )
        .await
    {
        return failed(e);
    }
    Json(json!(rows
        .into_iter()
        .map(|r| json!({"authority": r.authority, "mrn": r.mrn, "subjectId": r.subject.subject_id}))
        .collect::<Vec<_>>()))
    .into_response()
}

async fn dead_letters(State(g): State<Gateway>) -> Response {
    match g.db.dead_letters().await {
        Ok(list) => Json(json!(list)).into_response(),
        Err(e) => failed(e),
    }
}

async fn dead_letter(
    State(g): State<Gateway>,
    Extension(caller): Extension<ApiCaller>,
    MessageId(id): MessageId,
) -> Response {
    match g.db.dead_letter(id).await {
        Ok(Some((d, _))) => {
            // The raw message is PHI: who read it is recorded.
            if let Err(e) =
                g.db.audit(
                    caller.subject,
                    "read-dead-letter",
                    json!({"deadLetter": id}),
                )
                .await
            {
                return failed(e);
            }
            Json(json!(d)).into_response()
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no dead letter {id}")),
        Err(e) => failed(e),
    }
}

async fn replay(
    State(g): State<Gateway>,
    Extension(caller): Extension<ApiCaller>,
    MessageId(id): MessageId,
) -> Response {
    match g.replay(id, &caller.subject).await {
        Ok(Some(result)) => Json(json!({"id": id, "result": result})).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no dead letter {id}")),
        Err(e) => failed(e),
    }
}

async fn discard(
    State(g): State<Gateway>,
    Extension(caller): Extension<ApiCaller>,
    headers: HeaderMap,
    MessageId(id): MessageId,
) -> Response {
    let Some(why) = reason(&headers) else {
        return no_reason();
    };
    match g.db.discard(id, caller.subject, why).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, format!("no dead letter {id}")),
        Err(e) => failed(e),
    }
}

/// The files of the console.
const CONSOLE: &[&str] = &["console.html", "console.js", "signin.js", "app.css"];

/// `GET /app/{file}`: the console (`/app/console`) and its scripts, under a policy that lets
/// the page call the issuer's token endpoint.
async fn console_file(State(g): State<Gateway>, Path(name): Path<String>) -> Response {
    let name = if name == "console" {
        "console.html"
    } else {
        name.as_str()
    };
    let issuer: Vec<&str> = g
        .config
        .api
        .sign_in
        .iter()
        .map(|s| s.token.as_str())
        .collect();
    trialbridge_pages::file_with_policy(name, CONSOLE, &trialbridge_pages::policy(&issuer, &[]))
}

/// `GET /app/settings.json`: what the console shows before anyone signs in.
async fn console_settings(State(g): State<Gateway>) -> Response {
    let mut r = Json(json!({
        "site": g.config.site,
        "timeZone": g.config.timezone.iana_name().unwrap_or("UTC"),
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("a header"));
    r
}

/// `GET /.well-known/smart-configuration`: where the console signs people in (SMART App
/// Launch discovery, the same document the trial store serves); 404 when none is configured.
async fn smart_configuration(State(g): State<Gateway>) -> Response {
    match &g.config.api.sign_in {
        Some(s) => Json(json!({
            "authorization_endpoint": s.authorize,
            "token_endpoint": s.token,
            "grant_types_supported": ["authorization_code"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": ["launch-standalone", "client-public"],
        }))
        .into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "this gateway names no sign-in (TRIALBRIDGE_AUTH_AUTHORIZE_URL, TRIALBRIDGE_AUTH_TOKEN_URL)",
        ),
    }
}

#[derive(serde::Deserialize)]
struct MessagesQuery {
    q: Option<String>,
    state: Option<String>,
    before: Option<i64>,
    #[serde(rename = "_count")]
    count: Option<usize>,
}

/// `GET /messages?q=&state=&before=&_count=`: newest first; `next` is the `before` of the
/// following page.
async fn messages(
    State(g): State<Gateway>,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the query takes q (text), state (outbox, forwarded, done, dead), before (a message id) and _count (1 to 200)",
        );
    };
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match crate::db::State::parse(s) {
            Some(s) => Some(s),
            None => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "state: '{}' is not outbox, forwarded, done or dead",
                        s.chars().take(40).collect::<String>()
                    ),
                )
            }
        },
    };
    let limit = match q.count.unwrap_or(50) {
        n @ 1..=200 => n,
        _ => return problem(StatusCode::BAD_REQUEST, "_count is 1 to 200"),
    };
    let filter = crate::db::MessageFilter {
        state,
        text: q.q,
        before: q.before,
        limit: limit + 1,
    };
    match g.db.messages(filter).await {
        Ok(mut rows) => {
            let next = (rows.len() > limit).then(|| rows[limit - 1].id);
            rows.truncate(limit);
            Json(json!({"messages": rows, "next": next})).into_response()
        }
        Err(e) => failed(e),
    }
}

/// Each segment of an HL7 v2 text with its fields labelled; `None` when it does not parse.
fn labelled(text: &[u8]) -> Option<Value> {
    let m = trialbridge_hl7v2::Message::parse(text).ok()?;
    Some(json!(trialbridge_hl7v2::labels::labelled(&m)
        .into_iter()
        .map(|s| json!({
            "id": s.id,
            "number": s.number,
            "fields": s.fields.into_iter().map(|f| json!({"position": f.position, "name": f.name, "value": f.value})).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>()))
}

/// `GET /messages/{id}`: the message as received (text and labelled fields), the Bundle it
/// became and the ACK that was sent. The raw message is PHI: who read it is recorded.
async fn message(
    State(g): State<Gateway>,
    Extension(caller): Extension<ApiCaller>,
    MessageId(id): MessageId,
) -> Response {
    let record = match g.db.message(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return problem(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(e) => return failed(e),
    };
    if record.raw.is_some() {
        if let Err(e) =
            g.db.audit(caller.subject, "read-message", json!({"message": id}))
                .await
        {
            return failed(e);
        }
    }
    let mut out = json!(record.row);
    out["raw"] = json!(record
        .raw
        .as_deref()
        .map(|r| String::from_utf8_lossy(r).replace('\r', "\n")));
    out["segments"] = record.raw.as_deref().and_then(labelled).into();
    out["bundle"] = record
        .bundle
        .as_deref()
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
        .into();
    out["ack"] = json!(record.ack.replace('\r', "\n"));
    out["ackSegments"] = labelled(record.ack.as_bytes()).into();
    Json(out).into_response()
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    #[serde(rename = "_count")]
    count: Option<usize>,
}

async fn audit(State(g): State<Gateway>, Query(q): Query<AuditQuery>) -> Response {
    match g.db.audit_log(q.count.unwrap_or(100).min(1000)).await {
        Ok(list) => Json(json!(list)).into_response(),
        Err(e) => failed(e),
    }
}

/// Ready when the gateway's own database answers: messages are taken and queued even while
/// the store is away, so the store's state does not matter here.
async fn readyz(State(g): State<Gateway>) -> Response {
    match g.db.status().await {
        Ok(_) => "ready".into_response(),
        Err(e) => failed(e),
    }
}

/// The database's counters and states with the MLLP connection counters.
async fn all_status(g: &Gateway) -> Result<Value, crate::db::DbError> {
    let mut s = g.db.status().await?;
    if let Value::Object(m) = &mut s {
        for (k, v) in g.connections.counters() {
            // Open connections are a current figure; the others count since the start.
            let key = if k == "mllp_connections_open" {
                k.to_string()
            } else {
                format!("{k}_total")
            };
            m.insert(key, v.into());
        }
    }
    Ok(s)
}

/// `GET /metrics`: the counters and the message states (outbox depth, dead letters) in the
/// Prometheus text format.
async fn metrics(State(g): State<Gateway>) -> Response {
    let status = match all_status(&g).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let mut counters = String::new();
    let mut states = String::new();
    let mut gauges = String::new();
    for (name, value) in status.as_object().into_iter().flatten() {
        let v = value.as_i64().unwrap_or(0);
        if let Some(state) = name.strip_prefix("messages_") {
            states.push_str(&format!(
                "trialbridge_gateway_messages{{state=\"{state}\"}} {v}\n"
            ));
        } else if let Some(event) = name.strip_suffix("_total") {
            counters.push_str(&format!(
                "trialbridge_gateway_events_total{{event=\"{event}\"}} {v}\n"
            ));
        } else if matches!(
            name.as_str(),
            "mllp_connections_open" | "received_last_hour" | "dead_letters_last_hour"
        ) {
            gauges.push_str(&format!(
                "# TYPE trialbridge_gateway_{name} gauge\ntrialbridge_gateway_{name} {v}\n"
            ));
        }
    }
    let text = format!(
        "# HELP trialbridge_gateway_messages Messages held by the gateway by state (outbox: waiting to be forwarded; dead: the dead-letter queue)\n\
         # TYPE trialbridge_gateway_messages gauge\n{states}\
         # HELP trialbridge_gateway_events_total Messages received, acknowledged, forwarded, refused, counted since the database was created; MLLP connection events since the start\n\
         # TYPE trialbridge_gateway_events_total counter\n{counters}{gauges}"
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

async fn status(State(g): State<Gateway>) -> Response {
    match all_status(&g).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrolment_requests_name_what_is_wrong_and_never_panic() {
        let ok = enrol_request(
            br#"{"subjectId":"MC-01-001","mrn":"4711","authority":"KH"}"#,
            "site-01",
        )
        .unwrap();
        assert_eq!(ok.identifiers, [("KH".to_string(), "4711".to_string())]);
        assert_eq!(ok.facts, SubjectFacts::default());
        for (body, says) in [
            (
                r#"{"subjectId":"MC-01-001","mrn":"4711"}"#,
                "authority is required",
            ),
            (
                r#"{"subjectId":"MC-01-001","identifiers":[{"value":"1"}]}"#,
                "identifiers[0].authority",
            ),
            (
                r#"{"subjectId":"MC-01-001","identifiers":[{"authority":"KH","value":5}]}"#,
                "identifiers[0].value must be a string",
            ),
            (
                r#"{"subjectId":"MC-ü1-0001","mrn":"1","authority":"KH"}"#,
                "is not a subject id",
            ),
            (
                r#"{"subjectId":"ééééé","mrn":"1","authority":"KH"}"#,
                "is not a subject id",
            ),
            (
                r#"{"subjectId":"MC-02-001","mrn":"1","authority":"KH"}"#,
                "is not a subject id",
            ),
            (r#"{"subjectId":7}"#, "subjectId must be a string"),
            (r#"[1,2]"#, "is not a subject id"),
            (
                r#"{"subjectId":"MC-01-001","mrn":"1","authority":"KH","birthYear":"88"}"#,
                "birthYear",
            ),
            ("not json", "not JSON"),
        ] {
            let e = enrol_request(body.as_bytes(), "site-01")
                .err()
                .unwrap_or_default();
            assert!(e.contains(says), "{body}: {e}");
        }
    }
}
