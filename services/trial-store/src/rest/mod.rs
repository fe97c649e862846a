//! The HTTP edge: routes, extractors, content negotiation, response shaping, errors as
//! OperationOutcomes, authentication and audit of requests, metrics, the OpenAPI document. The
//! only code of the store that knows HTTP; each handler extracts, calls one function of
//! `fhir` or `trial`, and shapes its answer.

pub mod access;
pub mod app;
mod bundle;
mod capability;
pub mod error;
mod export;
mod extract;
mod history;
pub mod metrics;
mod monitor;
pub mod negotiate;
pub mod openapi;
mod resources;
pub mod respond;
mod search;
mod validate;
mod views;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use trialbridge_fhir::IssueType;

use crate::error::{Status, StoreError};
use crate::fhir::StoreState;

/// The router of the FHIR API (`/fhir/...`), health, metrics and the OpenAPI document.
pub fn routes(state: StoreState) -> Router {
    Router::new()
        .route("/fhir/metadata", get(capability::metadata))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(capability::smart_configuration),
        )
        .route(
            "/.well-known/smart-configuration",
            get(capability::smart_configuration),
        )
        .route("/fhir", post(bundle::process).get(search::system_search))
        .route("/fhir/", post(bundle::process).get(search::system_search))
        .route("/fhir/_history", get(history::system))
        .route(
            "/fhir/{rtype}",
            get(search::type_search)
                .post(resources::create)
                .put(resources::conditional_update)
                .patch(resources::conditional_patch)
                .delete(resources::conditional_delete),
        )
        .route("/fhir/$export", get(export::system))
        .route("/fhir/{rtype}/$export", get(export::type_level))
        .route("/fhir/Group/{id}/$export", get(export::group))
        .route(
            "/fhir/$export-status/{job}",
            get(export::status).delete(export::cancel),
        )
        .route("/fhir/$export-file/{job}/{file}", get(export::file))
        .route("/fhir/$viewdefinition-run", post(views::run_posted))
        .route(
            "/fhir/ViewDefinition/$viewdefinition-run",
            post(views::run_posted),
        )
        .route(
            "/fhir/ViewDefinition/{name}/$viewdefinition-run",
            get(views::run_named),
        )
        .route("/fhir/{rtype}/_search", post(search::type_search_post))
        .route("/fhir/{rtype}/$validate", post(validate::type_level))
        .route(
            "/fhir/{rtype}/{id}/$validate",
            post(validate::instance_level).get(validate::instance_level),
        )
        .route("/fhir/{rtype}/_history", get(history::of_type))
        .route("/fhir/{rtype}/{id}/$sdv", get(monitor::sdv))
        .route("/fhir/{rtype}/{id}/$diff", get(monitor::version_diff))
        .route(
            "/fhir/{rtype}/{id}/$verify",
            post(monitor::write_operation::<{ monitor::VERIFY }>),
        )
        .route(
            "/fhir/{rtype}/{id}/$raise-query",
            post(monitor::write_operation::<{ monitor::RAISE_QUERY }>),
        )
        .route(
            "/fhir/{rtype}/{id}/$answer",
            post(monitor::write_operation::<{ monitor::ANSWER_QUERY }>),
        )
        .route(
            "/fhir/{rtype}/{id}/$close",
            post(monitor::write_operation::<{ monitor::CLOSE_QUERY }>),
        )
        .route(
            "/fhir/{rtype}/{id}",
            get(resources::read)
                .put(resources::update)
                .patch(resources::patch)
                .delete(resources::delete),
        )
        .route("/fhir/{rtype}/{id}/_history", get(history::instance))
        .route("/fhir/{rtype}/{id}/_history/{vid}", get(resources::vread))
        .route(
            "/fhir/{rtype}/{id}/{member}",
            get(search::compartment_search),
        )
        .route("/app/monitor", get(app::monitor_page))
        .route("/app/{file}", get(app::file))
        .route(
            "/dev-issuer/authorize",
            get(app::authorize_form).post(app::authorize),
        )
        .route("/dev-issuer/token", post(app::token))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // A handler that panics answers 500 here, inside the audit middleware, so that the
        // request is recorded with its status; the outer layer catches what is left.
        .layer(CatchPanicLayer::custom(error::panicked))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(metrics::record))
        // Every answer may carry PHI: no browser or proxy keeps a copy (an answer that says
        // otherwise, none today, keeps its own).
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        ))
        // Outside authentication: a preflight carries no token and is answered here.
        .layer(cors(&state.config.cors_origins))
        .layer(CatchPanicLayer::custom(error::panicked))
        .with_state(state)
}

/// Cross-origin calls from browser tools: the origins configured (`*`: any), the headers the
/// FHIR API reads and the ones a client needs to see (versions, locations, progress).
fn cors(origins: &[String]) -> CorsLayer {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            HeaderName::from_static("if-none-exist"),
            HeaderName::from_static("prefer"),
            HeaderName::from_static("x-reason-for-change"),
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::CONTENT_LOCATION,
            header::LAST_MODIFIED,
            HeaderName::from_static("x-progress"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

async fn not_found(uri: axum::http::Uri) -> Response {
    StoreError::new(
        Status::NotFound,
        IssueType::NotFound,
        format!("no endpoint at {}", uri.path()),
    )
    .into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    StoreError::new(
        Status::MethodNotAllowed,
        IssueType::NotSupported,
        format!("{method} is not supported on {}", uri.path()),
    )
    .into_response()
}

async fn readyz(State(s): State<StoreState>) -> Response {
    if s.store.is_ready().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        StoreError::new(
            Status::Unavailable,
            IssueType::Exception,
            "the trial database does not answer",
        )
        .into_response()
    }
}
