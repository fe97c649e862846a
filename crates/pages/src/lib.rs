//! The browser pages of trialbridge, plain HTML and JavaScript with no build step: the
//! monitor workspace (served by the trial store at `/app/monitor`), with what every page
//! shares (sign-in, style sheet). The
//! pages hold no data: everything they show they fetch with the signed-in person's token.
//! Every file is answered with `Cache-Control: no-store` and a Content-Security-Policy that
//! allows the page's own files only (and the token endpoint of the sign-in, when that is
//! another origin).

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

/// Origins a page may reach beyond its own: `connect` for its `fetch` calls (the token
/// endpoint of an issuer on another origin), `forms` for where its forms may lead (the
/// sign-in form's redirect back to a page of another service).
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// Extra `connect-src` origins.
    pub connect: Vec<String>,
    /// Extra `form-action` origins.
    pub forms: Vec<String>,
}

/// The Content-Security-Policy of the pages.
pub fn content_security_policy(reach: &Reach) -> String {
    let list = |v: &[String]| -> String { v.iter().map(|o| format!(" {o}")).collect() };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'{}; frame-ancestors 'none'; form-action 'self'{}; base-uri 'none'",
        list(&reach.connect),
        list(&reach.forms)
    )
}

/// Answers with file `name` if it is one of `served` (each service serves its own pages and
/// the shared files), else 404.
pub fn file(name: &str, served: &[&str], reach: &Reach) -> Response {
    match FILES
        .iter()
        .find(|(n, _, _)| *n == name && served.contains(n))
    {
        Some((_, content_type, body)) => page(content_type, body.to_string(), reach),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no such page",
        )
            .into_response(),
    }
}

/// A page or file response with the pages' headers.
pub fn page(content_type: &'static str, body: String, reach: &Reach) -> Response {
    let csp = HeaderValue::from_str(&content_security_policy(reach))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::CONTENT_SECURITY_POLICY, csp),
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

/// The origin (`scheme://host[:port]`) of a URL, if it has one.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_own_files_and_names_the_token_origin() {
        let own = content_security_policy(&Reach::default());
        assert!(own.contains("connect-src 'self';"), "{own}");
        assert!(own.contains("script-src 'self';"));
        assert!(!own.contains("unsafe-inline"));
        let other = content_security_policy(&Reach {
            connect: vec!["http://127.0.0.1:8080".into()],
            forms: vec!["http://127.0.0.1:8081".into()],
        });
        assert!(
            other.contains("connect-src 'self' http://127.0.0.1:8080;"),
            "{other}"
        );
        assert!(
            other.contains("form-action 'self' http://127.0.0.1:8081;"),
            "{other}"
        );
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(
            origin_of("http://h:8080/dev-issuer/token").as_deref(),
            Some("http://h:8080")
        );
        assert_eq!(
            origin_of("https://idp.example?x").as_deref(),
            Some("https://idp.example")
        );
        assert_eq!(origin_of("/relative"), None);
    }

    #[test]
    fn each_service_serves_only_its_pages() {
        assert_eq!(
            file("monitor.js", &["monitor.js"], &Reach::default()).status(),
            StatusCode::OK
        );
        assert_eq!(
            file("signin.js", &["monitor.js"], &Reach::default()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            file("../Cargo.toml", &["monitor.js"], &Reach::default()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
