//! The browser pages of trialbridge, plain HTML and JavaScript with no build step: the
//! monitor workspace (served by the trial store at `/app/monitor`), the integrator console
//! (served by the site gateway at `/app`), and what every page shares (sign-in, style sheet).
//! The pages hold no data: everything they show they fetch with the signed-in person's token.
//! Every file is answered with `Cache-Control: no-store` and a Content-Security-Policy that
//! allows the page's own files only (and, for a page whose sign-in is served elsewhere, calls
//! to that issuer's origin).

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
        "console.html",
        "text/html; charset=utf-8",
        include_str!("../assets/console.html"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/console.js"),
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

/// The policy of pages that also call the origins of `connect` (the token endpoint of an
/// issuer elsewhere) and send forms, or are redirected after one, to the origins of `forms`
/// (an issuer's sign-in form sending the browser back to a page of another server). A URL
/// that is not a plain http(s) origin is left out: it could otherwise widen the policy.
pub fn policy(connect: &[&str], forms: &[&str]) -> String {
    let widen = |policy: String, directive: &str, urls: &[&str]| {
        let mut origins: Vec<String> = urls.iter().filter_map(|u| origin_of(u)).collect();
        origins.sort();
        origins.dedup();
        if origins.is_empty() {
            return policy;
        }
        policy.replace(
            &format!("{directive} 'self';"),
            &format!("{directive} 'self' {};", origins.join(" ")),
        )
    };
    let p = widen(CONTENT_SECURITY_POLICY.to_string(), "connect-src", connect);
    widen(p, "form-action", forms)
}

/// `scheme://host[:port]` of an http(s) URL (a name or an IPv4 address: CSP sources cannot
/// name IPv6 literals).
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let plain = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    plain.then(|| format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

/// Answers with file `name` if it is one of `served` (each service serves its own pages and
/// the shared files), else 404.
pub fn file(name: &str, served: &[&str]) -> Response {
    file_with_policy(name, served, CONTENT_SECURITY_POLICY)
}

/// [`file`] under another policy (see [`policy`]).
pub fn file_with_policy(name: &str, served: &[&str], policy: &str) -> Response {
    match FILES
        .iter()
        .find(|(n, _, _)| *n == name && served.contains(n))
    {
        Some((_, content_type, body)) => with_policy(page(content_type, body.to_string()), policy),
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

/// `r` under `policy` instead of the default one.
pub fn with_policy(mut r: Response, policy: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(policy) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
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
    fn a_page_may_call_its_issuers_origin_and_nothing_else() {
        let p = policy(&["http://127.0.0.1:8080/dev-issuer/token"], &[]);
        assert!(
            p.contains("connect-src 'self' http://127.0.0.1:8080;"),
            "{p}"
        );
        assert!(p.contains("script-src 'self';"));
        assert!(p.contains("form-action 'self';"));
        let f = policy(&[], &["http://127.0.0.1:9000", "HTTP://h:1/app/x"]);
        assert!(
            f.contains("form-action 'self' http://127.0.0.1:9000 http://h:1;"),
            "{f}"
        );
        for bad in [
            "javascript:alert(1)",
            "http://h; script-src *",
            "ftp://h/x",
            "http:///x",
            "http://h x/",
        ] {
            assert_eq!(policy(&[bad], &[bad]), CONTENT_SECURITY_POLICY, "{bad}");
        }
        let r = file_with_policy("console.html", &["console.html"], &p);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], p.as_str());
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
