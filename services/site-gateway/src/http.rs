//! The gateway's HTTP API: `POST /hl7v2` for sites that cannot do MLLP, the key list
//! (`/enrolments`, site staff only: it maps MRNs to subject ids and never leaves the site),
//! the dead-letter queue (`/dead-letters`: list, inspect, replay, discard), status and health.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::Gateway;

/// The gateway's routes.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/hl7v2", post(hl7v2))
        .route("/enrolments", post(enrol).get(enrolments))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/{id}", get(dead_letter).delete(discard))
        .route("/dead-letters/{id}/replay", post(replay))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(gateway)
}

fn problem(status: StatusCode, text: impl Into<String>) -> Response {
    let oo = trialbridge_fhir::OperationOutcome::single(trialbridge_fhir::OutcomeIssue::error(
        if status == StatusCode::NOT_FOUND {
            trialbridge_fhir::IssueType::NotFound
        } else {
            trialbridge_fhir::IssueType::Invalid
        },
        text,
    ));
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        oo.to_json().to_string(),
    )
        .into_response()
}

fn failed(e: crate::db::DbError) -> Response {
    problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
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

async fn enrol(State(g): State<Gateway>, Json(body): Json<Value>) -> Response {
    let subject = body.get("subjectId").and_then(Value::as_str).unwrap_or("");
    let valid = subject.len() == 9
        && subject.starts_with("MC-")
        && subject[3..5] == g.config.site[5..]
        && subject[6..].bytes().all(|b| b.is_ascii_digit())
        && &subject[5..6] == "-";
    if !valid {
        return problem(
            StatusCode::BAD_REQUEST,
            format!(
                "subjectId '{subject}' is not a subject id of {} (MC-{}-NNN)",
                g.config.site,
                &g.config.site[5..]
            ),
        );
    }
    let mrns: Vec<(String, String)> = match body.get("identifiers").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(|i| {
                Some((
                    i.get("authority")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    i.get("value")?.as_str()?.to_string(),
                ))
            })
            .collect(),
        None => body
            .get("mrn")
            .and_then(Value::as_str)
            .map(|m| {
                vec![(
                    body.get("authority")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    m.to_string(),
                )]
            })
            .unwrap_or_default(),
    };
    if mrns.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "an enrolment needs the patient's MRN (mrn, or identifiers [{authority, value}])",
        );
    }
    let gender = body.get("gender").and_then(Value::as_str);
    if gender.is_some_and(|g| !matches!(g, "male" | "female" | "other" | "unknown")) {
        return problem(
            StatusCode::BAD_REQUEST,
            "gender is male, female, other or unknown",
        );
    }
    let year = body.get("birthYear").and_then(|y| {
        y.as_u64()
            .map(|n| n.to_string())
            .or_else(|| y.as_str().map(String::from))
    });
    if year
        .as_deref()
        .is_some_and(|y| y.len() != 4 || !y.bytes().all(|b| b.is_ascii_digit()))
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "birthYear is a four-digit year (the full date never leaves the site)",
        );
    }
    match g.enrol(mrns, subject, gender, year.as_deref()).await {
        Ok(who) => (StatusCode::CREATED, Json(json!({"subjectId": who.subject_id, "patient": format!("Patient/{}", who.patient_id), "study": format!("ResearchStudy/{}", who.site_study)}))).into_response(),
        Err(e) => failed(e),
    }
}

async fn enrolments(State(g): State<Gateway>) -> Response {
    match g.db.enrolments().await {
        Ok(rows) => Json(json!(rows
            .into_iter()
            .map(|(a, m, s)| json!({"authority": a, "mrn": m, "subjectId": s}))
            .collect::<Vec<_>>()))
        .into_response(),
        Err(e) => failed(e),
    }
}

async fn dead_letters(State(g): State<Gateway>) -> Response {
    match g.db.dead_letters().await {
        Ok(list) => Json(json!(list)).into_response(),
        Err(e) => failed(e),
    }
}

async fn dead_letter(State(g): State<Gateway>, Path(id): Path<i64>) -> Response {
    match g.db.dead_letter(id).await {
        Ok(Some((d, _))) => Json(json!(d)).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no dead letter {id}")),
        Err(e) => failed(e),
    }
}

async fn replay(State(g): State<Gateway>, Path(id): Path<i64>) -> Response {
    match g.replay(id).await {
        Ok(Some(result)) => Json(json!({"id": id, "result": result})).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no dead letter {id}")),
        Err(e) => failed(e),
    }
}

async fn discard(State(g): State<Gateway>, Path(id): Path<i64>) -> Response {
    match g.db.discard(id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, format!("no dead letter {id}")),
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

/// `GET /metrics`: the counters and the message states (outbox depth, dead letters) in the
/// Prometheus text format.
async fn metrics(State(g): State<Gateway>) -> Response {
    let status = match g.db.status().await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let mut counters = String::new();
    let mut states = String::new();
    for (name, value) in status.as_object().into_iter().flatten() {
        let v = value.as_i64().unwrap_or(0);
        match name.strip_prefix("messages_") {
            Some(state) => states.push_str(&format!(
                "trialbridge_gateway_messages{{state=\"{state}\"}} {v}\n"
            )),
            None => counters.push_str(&format!(
                "trialbridge_gateway_events_total{{event=\"{name}\"}} {v}\n"
            )),
        }
    }
    let text = format!(
        "# HELP trialbridge_gateway_messages Messages held by the gateway by state (outbox: waiting to be forwarded; dead: the dead-letter queue)\n\
         # TYPE trialbridge_gateway_messages gauge\n{states}\
         # HELP trialbridge_gateway_events_total Messages received, acknowledged, forwarded, refused, counted since the database was created\n\
         # TYPE trialbridge_gateway_events_total counter\n{counters}"
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

async fn status(State(g): State<Gateway>) -> Response {
    match g.db.status().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => failed(e),
    }
}
