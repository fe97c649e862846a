//! History handlers: system, type and instance level (`fhir::history` writes the Bundles).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use trialbridge_auth::Interaction;
use trialbridge_storage::HistoryScope;

use crate::error::StoreError;
use crate::fhir::{history, StoreState};
use crate::rest::extract::{Instance, TypeName};
use crate::rest::negotiate::Asked;
use crate::rest::respond::json_response;
use crate::security::Caller;

pub async fn system(
    State(s): State<StoreState>,
    caller: Caller,
    a: Asked,
) -> Result<Response, StoreError> {
    caller.require_every_type(Interaction::Search)?;
    let scope = HistoryScope::System;
    let b = history::history(
        &s,
        &caller,
        scope,
        "_history".into(),
        &a.pairs,
        a.prefer.strict,
    )
    .await?;
    Ok(json_response(StatusCode::OK, b, a.fmt))
}

pub async fn of_type(
    State(s): State<StoreState>,
    caller: Caller,
    TypeName(rt): TypeName,
    a: Asked,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Search)?;
    let (scope, path) = (HistoryScope::Type(rt.to_string()), format!("{rt}/_history"));
    let b = history::history(&s, &caller, scope, path, &a.pairs, a.prefer.strict).await?;
    Ok(json_response(StatusCode::OK, b, a.fmt))
}

pub async fn instance(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Read)?;
    let b = history::instance_history(&s, &caller, rt, &id, &a.pairs, a.prefer.strict).await?;
    Ok(json_response(StatusCode::OK, b, a.fmt))
}
