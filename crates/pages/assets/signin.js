// Sign-in for trialbridge's pages: OAuth 2.0 authorization code with PKCE (RFC 7636) against
// the issuer that the server names in /.well-known/smart-configuration (the sponsor's identity
// provider in production, the local profile's development issuer under `trialbridge serve`).
// The access token lives in sessionStorage: it ends with the tab, and no PHI is stored.

const KEY = "trialbridge.token";

function b64url(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function configuration() {
  const r = await fetch("/.well-known/smart-configuration", { cache: "no-store" });
  if (!r.ok) throw new Error(`the server's sign-in configuration: HTTP ${r.status}`);
  return r.json();
}

/** The claims of the current token, or null when signed out or expired. */
export function session() {
  const token = sessionStorage.getItem(KEY);
  if (!token) return null;
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    if (claims.exp && claims.exp * 1000 < Date.now()) {
      sessionStorage.removeItem(KEY);
      return null;
    }
    return { token, claims };
  } catch {
    sessionStorage.removeItem(KEY);
    return null;
  }
}

/** Sends the browser to the issuer's authorization endpoint. */
export async function signIn(clientId, scope) {
  const conf = await configuration();
  if (!conf.authorization_endpoint || !conf.token_endpoint) {
    throw new Error("the server names no authorization endpoint (TRIALBRIDGE_AUTH_AUTHORIZE_URL)");
  }
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
  const redirect = location.origin + location.pathname;
  sessionStorage.setItem("trialbridge.pkce", JSON.stringify({ verifier, state, redirect, clientId }));
  const u = new URL(conf.authorization_endpoint, location.href);
  u.search = new URLSearchParams({
    response_type: "code",
    client_id: clientId,
    redirect_uri: redirect,
    scope,
    state,
    code_challenge: b64url(new Uint8Array(digest)),
    code_challenge_method: "S256",
  }).toString();
  location.assign(u.toString());
}

/** Finishes a sign-in when the issuer sent the browser back with a code; true if it did. */
export async function finishSignIn() {
  const q = new URLSearchParams(location.search);
  if (!q.has("code") && !q.has("error")) return false;
  const pending = JSON.parse(sessionStorage.getItem("trialbridge.pkce") || "null");
  sessionStorage.removeItem("trialbridge.pkce");
  history.replaceState(null, "", location.pathname + location.hash);
  if (q.has("error")) throw new Error(`sign-in refused: ${q.get("error_description") || q.get("error")}`);
  if (!pending || pending.state !== q.get("state")) throw new Error("sign-in answer does not match the request (state)");
  const conf = await configuration();
  const r = await fetch(conf.token_endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: q.get("code"),
      redirect_uri: pending.redirect,
      client_id: pending.clientId,
      code_verifier: pending.verifier,
    }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok || !body.access_token) throw new Error(`token request: ${body.error_description || body.error || r.status}`);
  sessionStorage.setItem(KEY, body.access_token);
  return true;
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

/** Builds an element: h("td", {class: "x"}, "text", child). Text is always text, never HTML. */
export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** A date-time as people at the sites read it (their time zone), or the text as given. */
export function siteTime(value, timeZone) {
  if (!value) return "";
  if (!/T/.test(value)) return value;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return value;
  return new Intl.DateTimeFormat("de-DE", { dateStyle: "medium", timeStyle: "short", timeZone }).format(d);
}
