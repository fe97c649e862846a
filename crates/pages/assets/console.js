// The integrator console of a site gateway: the messages the gateway took in (searchable), one
// message as received with its fields labelled (PID-3 "Patient Identifier List") beside the
// FHIR it became and the acknowledgement that was sent, the dead-letter queue with replay and
// discard (with a reason, audited by the gateway), live counters and the key list. Everything
// comes from the gateway's API with the signed-in person's token.

import { session, signIn, finishSignIn, signOut, h, siteTime } from "/app/signin.js";

const view = document.getElementById("view");
const statusBox = document.getElementById("status");
let settings = { site: "", timeZone: "Europe/Berlin" };

function say(text, kind = "info") {
  statusBox.replaceChildren(text ? h("p", { class: kind }, text) : "");
}

async function api(path, init = {}) {
  const s = session();
  if (!s) throw new Error("signed out");
  const r = await fetch(path, {
    ...init,
    cache: "no-store",
    headers: { accept: "application/json", authorization: `Bearer ${s.token}`, ...(init.headers || {}) },
  });
  const body = r.status === 204 ? null : await r.json().catch(() => null);
  if (r.status === 401) {
    signOut();
    render();
    throw new Error("the session ended: sign in again");
  }
  if (!r.ok) throw new Error(body?.issue?.[0]?.diagnostics || `HTTP ${r.status}`);
  return body;
}

const time = (v) => siteTime(v, settings.timeZone);

function subjectText(m) {
  if (m.subjects?.length) return m.subjects.join(", ");
  return m.notEnrolled ? "not enrolled" : "";
}

// ---- counters ---------------------------------------------------------------------------

const COUNTERS = [
  ["outbox", "Waiting for the trial store (outbox)"],
  ["dead_letters", "Dead letters now"],
  ["received_last_hour", "Received in the last hour"],
  ["dead_letters_last_hour", "Dead letters in the last hour"],
  ["mllp_connections_open", "Open MLLP connections"],
];

async function counters() {
  try {
    const r = await fetch("/status", { cache: "no-store" });
    const s = await r.json();
    document.getElementById("now").replaceChildren(
      ...COUNTERS.flatMap(([k, label]) => [h("dt", {}, label), h("dd", { id: `now-${k}` }, s[k] ?? 0)]));
  } catch {
    // The counters come back with the next refresh.
  }
}

// ---- messages ---------------------------------------------------------------------------

const STATES = [["", "any state"], ["outbox", "waiting (outbox)"], ["forwarded", "forwarded"], ["done", "done"], ["dead", "dead letter"]];

async function messages(params) {
  const q = params.get("q") || "";
  const state = params.get("state") || "";
  const query = new URLSearchParams({ _count: "50" });
  if (q) query.set("q", q);
  if (state) query.set("state", state);
  if (params.get("before")) query.set("before", params.get("before"));
  say("Loading messages…");
  const r = await api(`/messages?${query}`);
  say("");
  const search = h("input", { id: "search", name: "q", type: "search", value: q });
  const stateSelect = h("select", { id: "state", name: "state" },
    STATES.map(([v, label]) => h("option", { value: v, selected: v === state }, label)));
  const form = h("form", {
    role: "search",
    onsubmit: (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      if (search.value) p.set("q", search.value);
      if (stateSelect.value) p.set("state", stateSelect.value);
      location.hash = `#/messages?${p}`;
    },
  },
  h("label", { for: "search" }, "Search (control id, sender, type, subject, reason)"), search,
  h("label", { for: "state" }, "State"), stateSelect,
  h("p", {}, h("button", { type: "submit" }, "Search")));
  const title = state === "dead" ? "Dead letters" : "Messages";
  const rows = r.messages.map((m) => h("tr", {},
    h("th", { scope: "row" }, h("a", { href: `#/message/${m.id}` }, `${m.type || "message"} ${m.controlId}`)),
    h("td", {}, time(m.received)),
    h("td", {}, m.sender),
    h("td", {}, subjectText(m)),
    h("td", { class: m.state === "dead" ? "todo" : "" }, m.state),
    h("td", {}, m.reason || "")));
  const more = new URLSearchParams(params);
  if (r.next) more.set("before", r.next);
  view.replaceChildren(
    h("h2", {}, title),
    form,
    h("table", {},
      h("caption", {}, `${title}, newest first${q ? `, matching “${q}”` : ""}`),
      h("thead", {}, h("tr", {}, ...["Message", "Received", "Sender", "Subject", "State", "Reason"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 6 }, "No messages.")))),
    r.next ? h("nav", { "aria-label": "Message pages", class: "pager" }, h("a", { href: `#/messages?${more}` }, "Older messages")) : "");
}

function segmentTable(caption, segments) {
  return h("table", { class: "segments" },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, ...["Field", "Name", "Value"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, segments.flatMap((s) => s.fields.map((f) =>
      h("tr", {}, h("th", { scope: "row" }, f.position), h("td", {}, f.name || ""), h("td", { class: "value" }, f.value))))));
}

async function message(id) {
  say("Loading the message…");
  const m = await api(`/messages/${encodeURIComponent(id)}`);
  say("");
  const received = m.segments
    ? segmentTable("The message as received, field by field", m.segments)
    : h("p", {}, m.notEnrolled
      ? "Not kept: the patient is not enrolled, so nothing of the message stays at the gateway."
      : "Not kept (a discarded dead letter, or a row without a message).");
  const actions = m.state === "dead" ? deadLetterActions(m) : "";
  view.replaceChildren(
    h("h2", {}, `${m.type || "Message"} ${m.controlId}`),
    h("dl", { class: "facts" },
      h("dt", {}, "State"), h("dd", {}, m.state),
      h("dt", {}, "Received"), h("dd", {}, time(m.received)),
      h("dt", {}, "Sender"), h("dd", {}, m.sender),
      h("dt", {}, "Subject"), h("dd", {}, subjectText(m)),
      h("dt", {}, "Reason"), h("dd", {}, m.reason || "")),
    actions,
    h("div", { class: "columns" },
      h("section", { "aria-labelledby": "raw-h" }, h("h3", { id: "raw-h" }, "As received (HL7 v2)"), received),
      h("section", { "aria-labelledby": "fhir-h" }, h("h3", { id: "fhir-h" }, "What it became (FHIR)"),
        m.bundle ? h("pre", { tabindex: "0", "aria-label": "FHIR transaction Bundle" }, JSON.stringify(m.bundle, null, 2)) : h("p", {}, "Nothing for the trial store.")),
      h("section", { "aria-labelledby": "ack-h" }, h("h3", { id: "ack-h" }, "Acknowledgement sent"),
        m.ackSegments?.length ? segmentTable("The acknowledgement, field by field", m.ackSegments) : h("p", {}, "None (not an HL7 v2 message)."))));
}

function deadLetterActions(m) {
  const reason = h("textarea", { id: "discard-reason", name: "reason", rows: 2, required: true });
  return h("section", { "aria-labelledby": "dl-h" },
    h("h3", { id: "dl-h" }, "Dead letter"),
    h("p", {}, "Fix the cause first (for an unknown local code: the study's code map in the trial store), then replay. A replay runs the message through today's rules; the ACK the sender got stays as it was."),
    h("p", {}, h("button", {
      type: "button",
      onclick: async () => {
        try {
          const r = await api(`/dead-letters/${m.id}/replay`, { method: "POST" });
          await message(m.id);
          say(`Replayed: ${r.result}`, /dead/.test(r.result) ? "error" : "ok");
        } catch (e) {
          say(e.message, "error");
        }
      },
    }, "Replay")),
    h("form", {
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api(`/dead-letters/${m.id}`, { method: "DELETE", headers: { "x-reason-for-change": reason.value } });
          await message(m.id);
          say("Discarded.", "ok");
        } catch (e) {
          say(e.message, "error");
        }
      },
    },
    h("label", { for: "discard-reason" }, "Reason for discarding"), reason,
    h("p", {}, h("button", { type: "submit" }, "Discard"))));
}

// ---- key list ---------------------------------------------------------------------------

async function keys() {
  say("Loading the key list…");
  const rows = await api("/enrolments");
  say("");
  view.replaceChildren(
    h("h2", {}, "Key list"),
    h("p", {}, "Which hospital record (MRN and its assigning authority) belongs to which trial subject. It never leaves the site; reading it is recorded."),
    h("table", {},
      h("caption", {}, "Enrolled patients"),
      h("thead", {}, h("tr", {}, ...["Subject", "Authority", "MRN"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.length
        ? rows.map((r) => h("tr", {}, h("th", { scope: "row" }, r.subjectId), h("td", {}, r.authority), h("td", {}, r.mrn)))
        : h("tr", {}, h("td", { colspan: 3 }, "Nobody is enrolled yet.")))));
}

// ---- frame ------------------------------------------------------------------------------

async function render() {
  const s = session();
  document.getElementById("sign-in").hidden = !!s;
  document.getElementById("sign-out").hidden = !s;
  document.getElementById("who").textContent = s ? `Signed in as ${s.claims.sub}` : "";
  if (!s) {
    view.replaceChildren();
    return;
  }
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const [, page, arg] = path.split("/");
  try {
    if (page === "message" && arg) await message(decodeURIComponent(arg));
    else if (page === "keys") await keys();
    else await messages(new URLSearchParams(query || ""));
    document.getElementById("title").focus();
  } catch (e) {
    say(e.message, "error");
  }
}

async function start() {
  try {
    const r = await fetch("/app/settings.json", { cache: "no-store" });
    if (r.ok) settings = await r.json();
  } catch {
    // The defaults stay.
  }
  document.getElementById("tz").textContent = settings.timeZone;
  document.getElementById("site").textContent = settings.site;
  counters();
  setInterval(counters, 5000);
  document.getElementById("sign-in-button").addEventListener("click", () =>
    signIn("trialbridge-console", "openid system/*.cruds").catch((e) => say(e.message, "error")));
  document.getElementById("sign-out").addEventListener("click", () => {
    signOut();
    location.hash = "#/";
    render();
  });
  window.addEventListener("hashchange", render);
  await finishSignIn().catch((e) => say(e.message, "error"));
  await render();
}

start();
