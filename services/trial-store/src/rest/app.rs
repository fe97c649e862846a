//! The monitor workspace (`/app/monitor`): static pages that call the FHIR API with the
//! signed-in monitor's token, and, in the local profile only, the development issuer's
//! OAuth 2.0 endpoints the pages sign in against (`/dev-issuer/authorize`, `/dev-issuer/token`:
//! authorization code with PKCE, tokens signed with the local development key). In production
//! the sponsor's identity provider plays that part (`TRIALBRIDGE_AUTH_AUTHORIZE_URL`,
//! `TRIALBRIDGE_AUTH_TOKEN_URL`) and these two endpoints do not exist.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use trialbridge_auth::TokenRequest;

use crate::fhir::StoreState;
use crate::security::sign_in::DevSignIn;

/// The files the store serves.
const SERVED: &[&str] = &["monitor.html", "monitor.js", "signin.js", "app.css"];

/// `GET /app/monitor`.
pub async fn monitor_page() -> Response {
    trialbridge_pages::file("monitor.html", SERVED)
}

/// `GET /app/{file}`: the pages' scripts and style sheet.
pub async fn file(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let name = if name == "monitor" {
        "monitor.html"
    } else {
        name.as_str()
    };
    trialbridge_pages::file(name, SERVED)
}

/// The pairs of a form or query string (never refused: what is missing is checked by name).
fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// The parameters of an authorization request.
#[derive(Debug)]
pub struct AuthorizeRequest {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

impl AuthorizeRequest {
    fn from_pairs(form: &[(String, String)]) -> Self {
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Self {
            response_type: get("response_type"),
            client_id: get("client_id"),
            redirect_uri: get("redirect_uri"),
            scope: get("scope"),
            state: get("state"),
            code_challenge: get("code_challenge"),
            code_challenge_method: get("code_challenge_method"),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page_error(status: StatusCode, why: &str) -> Response {
    let body = format!("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign-in refused</title></head><body><main><h1>Sign-in refused</h1><p>{}</p></main></body></html>", escape(why));
    let mut r = trialbridge_pages::page("text/html; charset=utf-8", body);
    *r.status_mut() = status;
    r
}

/// Checks an authorization request: code flow, PKCE with S256, a redirect back to a page of
/// this server or of an origin allowed to sign in here (never elsewhere: the local issuer is
/// no open redirector).
fn checked(q: &AuthorizeRequest, dev: &DevSignIn) -> Result<(), String> {
    if q.response_type.as_deref() != Some("code") {
        return Err("response_type must be code".into());
    }
    if q.client_id.as_deref().unwrap_or("").is_empty() {
        return Err("client_id is required".into());
    }
    let redirect = q.redirect_uri.as_deref().unwrap_or("");
    if !dev.may_return_to(redirect) {
        return Err(format!(
            "redirect_uri must be a page of this server ({}/app/...) or of a console allowed to sign in here",
            dev.origin()
        ));
    }
    if q.code_challenge_method.as_deref() != Some("S256")
        || q.code_challenge.as_deref().unwrap_or("").len() < 43
    {
        return Err("PKCE is required: code_challenge with code_challenge_method S256".into());
    }
    Ok(())
}

/// `GET /dev-issuer/authorize`: the local profile's sign-in form (who signs in, which role,
/// which sites); nothing is checked against a directory of people, which is why it exists only
/// with the local development key.
pub async fn authorize_form(State(s): State<StoreState>, RawQuery(query): RawQuery) -> Response {
    let q = AuthorizeRequest::from_pairs(&pairs(query.unwrap_or_default().as_bytes()));
    let Some(dev) = s.dev_sign_in.as_ref() else {
        return page_error(
            StatusCode::NOT_FOUND,
            "this server signs in through the sponsor's identity provider",
        );
    };
    if let Err(why) = checked(&q, dev) {
        return page_error(StatusCode::BAD_REQUEST, &why);
    }
    let hidden: String = [
        ("response_type", &q.response_type),
        ("client_id", &q.client_id),
        ("redirect_uri", &q.redirect_uri),
        ("scope", &q.scope),
        ("state", &q.state),
        ("code_challenge", &q.code_challenge),
        ("code_challenge_method", &q.code_challenge_method),
    ]
    .iter()
    .map(|(k, v)| {
        format!(
            "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
            escape(v.as_deref().unwrap_or(""))
        )
    })
    .collect();
    let sites: String = trialbridge_study::site_studies()
        .iter()
        .enumerate()
        .map(|(i, site)| {
            format!(
                "<div><input type=\"checkbox\" id=\"site-{i}\" name=\"site\" value=\"{site}\"{}><label class=\"inline\" for=\"site-{i}\">{site}</label></div>",
                if i == 0 { " checked" } else { "" }
            )
        })
        .collect();
    let body = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Sign in · trialbridge (local)</title><link rel="stylesheet" href="/app/app.css"></head>
<body><header><p class="product">trialbridge</p><h1>Sign in (local development issuer)</h1></header>
<main><p>This server runs the local profile: its development key signs the token. In production the sponsor's identity provider asks for your credentials instead.</p>
<form method="post" action="/dev-issuer/authorize">{hidden}
<label for="subject">Your name or e-mail</label><input id="subject" name="subject" required value="monitor@sponsor.example">
<label for="role">Role</label><select id="role" name="role"><option value="monitor">monitor</option><option value="site">site</option></select>
<fieldset><legend>Sites</legend>{sites}</fieldset>
<p><button type="submit">Sign in</button></p></form></main></body></html>"#
    );
    // The form's answer sends the browser back to the page that asked, which may be another
    // server's (the gateway console): the policy allows that redirect, and only that.
    let others = dev.page_origins();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    trialbridge_pages::with_policy(
        trialbridge_pages::page("text/html; charset=utf-8", body),
        &trialbridge_pages::policy(&[], &others),
    )
}

/// `POST /dev-issuer/authorize`: hands out a code for the chosen identity and sends the
/// browser back.
pub async fn authorize(State(s): State<StoreState>, body: Bytes) -> Response {
    let form = pairs(&body);
    let Some(dev) = s.dev_sign_in.as_ref() else {
        return page_error(
            StatusCode::NOT_FOUND,
            "this server signs in through the sponsor's identity provider",
        );
    };
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let q = AuthorizeRequest::from_pairs(&form);
    if let Err(why) = checked(&q, dev) {
        return page_error(StatusCode::BAD_REQUEST, &why);
    }
    let subject = get("subject").unwrap_or_default();
    let role = get("role").and_then(|r| trialbridge_auth::parse_role(&r));
    let sites: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "site")
        .map(|(_, v)| v.clone())
        .filter(|v| trialbridge_study::site_studies().contains(v))
        .collect();
    let role = match role {
        Some(r @ (trialbridge_storage::Role::Monitor | trialbridge_storage::Role::Site)) => r,
        _ => return page_error(StatusCode::BAD_REQUEST, "role must be monitor or site"),
    };
    if subject.trim().is_empty()
        || sites.is_empty()
        || (role == trialbridge_storage::Role::Site && sites.len() != 1)
    {
        return page_error(
            StatusCode::BAD_REQUEST,
            "a name and at least one site are required (a site token names exactly one)",
        );
    }
    let redirect_uri = q.redirect_uri.clone().unwrap_or_default();
    let code = dev.issue_code(
        q.code_challenge.as_deref().unwrap_or_default(),
        q.client_id.as_deref().unwrap_or_default(),
        &redirect_uri,
        TokenRequest {
            subject: subject.trim().to_string(),
            role,
            sites,
            scope: trialbridge_auth::default_scopes(role).into(),
            lifetime_seconds: 3600,
        },
    );
    let mut back = url_with(&redirect_uri, &[("code", &code)]);
    if let Some(state) = &q.state {
        back = url_with(&back, &[("state", state)]);
    }
    Redirect::to(&back).into_response()
}

fn url_with(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = base.to_string();
    for (k, v) in params {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(k);
        out.push('=');
        out.push_str(&percent(v));
    }
    out
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn token_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// `POST /dev-issuer/token`: exchanges a code, once, for a token when the verifier matches
/// the challenge (RFC 7636 S256) and the client and redirect are the ones the code was given
/// to.
pub async fn token(State(s): State<StoreState>, body: Bytes) -> Response {
    let form: HashMap<String, String> = pairs(&body).into_iter().collect();
    let Some(dev) = s.dev_sign_in.as_ref() else {
        return token_error("invalid_request", "this server has no development issuer");
    };
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return token_error(
            "unsupported_grant_type",
            "grant_type must be authorization_code",
        );
    }
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    match dev.exchange(
        field("code"),
        field("code_verifier"),
        field("client_id"),
        field("redirect_uri"),
    ) {
        Err(why) => token_error("invalid_grant", why),
        Ok(issued) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({
                "access_token": issued.token, "token_type": "Bearer",
                "expires_in": issued.lifetime_seconds, "scope": issued.scope,
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(redirect: &str, challenge: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            response_type: Some("code".into()),
            client_id: Some("c".into()),
            redirect_uri: Some(redirect.into()),
            scope: None,
            state: None,
            code_challenge: Some(challenge.into()),
            code_challenge_method: Some("S256".into()),
        }
    }

    #[test]
    fn the_issuer_sends_browsers_back_to_allowed_pages_only() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevSignIn::open(dir.path(), "iss", "aud", "http://h:1/fhir").unwrap();
        let ok = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(checked(&request("http://h:1/app/monitor", ok), &dev).is_ok());
        let console = "http://h:2/app/console";
        assert!(checked(&request(console, ok), &dev).is_err());
        dev.allow_pages_of("http://h:2");
        assert!(checked(&request(console, ok), &dev).is_ok());
        for bad in [
            "http://evil/app/monitor",
            "http://h:1.evil/app/",
            "http://h:2.evil/app/console",
            "http://h:1/fhir/x",
            "http://h:2/messages",
            "/app/monitor",
        ] {
            assert!(checked(&request(bad, ok), &dev).is_err(), "{bad}");
        }
        assert!(checked(&request("http://h:1/app/monitor", "short"), &dev).is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            url_with("http://h/app/m", &[("state", "a b&c")]),
            "http://h/app/m?state=a%20b%26c"
        );
        assert_eq!(
            url_with("http://h/app/m?code=1", &[("state", "x")]),
            "http://h/app/m?code=1&state=x"
        );
    }
}
