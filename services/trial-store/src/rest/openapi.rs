//! The OpenAPI 3.1 description of trialbridge (`openapi/trialbridge.yaml`, built into the
//! binary), served as JSON at `/openapi.json` for API tools, fuzzers and client generators.

use std::sync::LazyLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The YAML as written in the repository.
const YAML: &str = include_str!("../../../../openapi/trialbridge.yaml");

/// The description as JSON text, converted once.
static JSON: LazyLock<Result<String, String>> = LazyLock::new(|| {
    serde_yaml_ng::from_str::<serde_json::Value>(YAML)
        .map(|v| v.to_string())
        .map_err(|e| format!("openapi/trialbridge.yaml: {e}"))
});

/// The description as a JSON value (tests compare it with the router).
pub fn value() -> Result<serde_json::Value, String> {
    JSON.as_ref()
        .map_err(Clone::clone)
        .and_then(|t| serde_json::from_str(t).map_err(|e| e.to_string()))
}

/// `GET /openapi.json`.
pub async fn document() -> Response {
    match &*JSON {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            text.clone(),
        )
            .into_response(),
        Err(e) => crate::error::StoreError::new(
            crate::error::Status::InternalError,
            trialbridge_fhir::IssueType::Exception,
            e.clone(),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_description_parses_as_openapi_3_1() {
        let v = super::value().unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        assert!(v["paths"].as_object().unwrap().len() > 100);
    }
}
