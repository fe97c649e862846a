//! The browser pages of trialbridge, plain HTML and JavaScript with no build step: the
//! monitor workspace (served by the trial store at `/app/monitor`), with what every page
//! shares (sign-in, style sheet). The
//! pages hold no data: everything they show they fetch with the signed-in person's token.
//! Every file is answered with `Cache-Control: no-store` and a Content-Security-Policy that
//! allows the page's own files only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The files, by name: (content type, text).
const FILES: &[(&str, &str, &str)] = &[
    (
        "monitor.html",
        "text/html; charset=utf-8",
        include_str!("../assets/monitor.html"),
    ),
    (
        "monitor.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/monitor.js"),
    ),
    (
        "signin.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/signin.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
];

/// The Content-Security-Policy of the pages: their own files only, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// Answers with file `name` if it is one of `served` (each service serves its own pages and
/// the shared files), else 404.
pub fn file(name: &str, served: &[&str]) -> Response {
    match FILES
        .iter()
        .find(|(n, _, _)| *n == name && served.contains(n))
    {
        Some((_, content_type, body)) => page(content_type, body.to_string()),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no such page",
        )
            .into_response(),
    }
}

/// A page or file response with the pages' headers.
pub fn page(content_type: &'static str, body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_own_files_only() {
        let own = CONTENT_SECURITY_POLICY;
        assert!(own.contains("connect-src 'self';"), "{own}");
        assert!(own.contains("script-src 'self';"));
        assert!(!own.contains("unsafe-inline"));
    }

    #[test]
    fn each_service_serves_only_its_pages() {
        assert_eq!(file("monitor.js", &["monitor.js"]).status(), StatusCode::OK);
        assert_eq!(
            file("signin.js", &["monitor.js"]).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            file("../Cargo.toml", &["monitor.js"]).status(),
            StatusCode::NOT_FOUND
        );
    }
}
