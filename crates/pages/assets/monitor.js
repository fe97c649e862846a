// The monitor workspace: a site worklist (ResearchStudy/$sdv), a subject's values by visit
// with sources, versions, verification, data queries and deviations (ResearchSubject/$sdv),
// the difference between versions ($diff), verification ($verify) and queries
// ($raise-query, $close). Site staff signed in with a site token see their site's part and
// answer open queries ($answer); verifying, raising and closing are the monitor's. Everything
// it shows comes from the FHIR API with the signed-in person's token, so the site isolation of
// the API is the page's.

import { session, signIn, finishSignIn, signOut, h, siteTime } from "/app/signin.js";

const TZ = "Europe/Berlin";
const STUDY = "mesemcart";
const view = document.getElementById("view");
const statusBox = document.getElementById("status");

function say(text, kind = "info") {
  statusBox.replaceChildren(text ? h("p", { class: kind }, text) : "");
}

async function api(path, init = {}) {
  const s = session();
  if (!s) throw new Error("signed out");
  const r = await fetch(`/fhir/${path}`, {
    ...init,
    cache: "no-store",
    headers: { accept: "application/fhir+json, application/json", authorization: `Bearer ${s.token}`, ...(init.headers || {}) },
  });
  const body = await r.json().catch(() => null);
  if (r.status === 401) {
    signOut();
    render();
    throw new Error("the session ended: sign in again");
  }
  if (!r.ok) {
    const issue = body?.issue?.[0];
    const where = issue?.expression?.length ? ` (${issue.expression.join(", ")})` : "";
    throw new Error(`${issue?.diagnostics || `HTTP ${r.status}`}${where}`);
  }
  return body;
}

function parameters(params) {
  return JSON.stringify({ resourceType: "Parameters", parameter: params });
}

function valueText(item) {
  const v = item.value;
  if (!v) return "";
  const [k, x] = Object.entries(v)[0];
  switch (k) {
    case "valueQuantity":
      return `${x.value} ${x.unit || x.code || ""}`.trim();
    case "valueCodeableConcept":
      return x.text || x.coding?.[0]?.display || x.coding?.[0]?.code || "";
    case "valueDateTime":
      return siteTime(x, TZ);
    default:
      return String(x);
  }
}

function itemName(item) {
  return item.display || item.code?.coding?.[0]?.code || item.type;
}

/** Whether the signed-in person is site staff (who answer queries) rather than a monitor. */
function isSite() {
  return session()?.claims.trialbridge_role === "site";
}

function verificationText(item) {
  if (item.verified) return "Verified";
  if (item.changedSinceVerification) return `Changed since verification of version ${item.verifiedVersion}`;
  return "Not verified";
}

// ---- worklist ---------------------------------------------------------------------------

async function worklist(offset) {
  say("Loading the worklist…");
  const r = await api(`ResearchStudy/${STUDY}/$sdv?_count=20&_offset=${offset}`);
  say("");
  const rows = r.subjects.map((s) => {
    const id = s.subject.split("/")[1];
    return h("tr", {},
      h("th", { scope: "row" }, h("a", { href: `#/subject/${id}` }, s.identifier || id)),
      h("td", {}, s.site || ""),
      h("td", {}, s.status || ""),
      h("td", { class: "num" }, s.values),
      h("td", { class: "num" }, s.verified),
      h("td", { class: "num" }, s.unverified),
      h("td", { class: "num" }, s.changedSinceVerification),
      h("td", { class: "num" }, s.openQueries),
      h("td", { class: "num" }, s.deviations));
  });
  const pager = h("nav", { "aria-label": "Worklist pages", class: "pager" },
    offset > 0 ? h("a", { href: `#/worklist/${Math.max(0, offset - r.count)}` }, "Previous page") : null,
    h("span", {}, `Subjects ${r.total ? offset + 1 : 0}–${offset + r.subjects.length} of ${r.total}`),
    r.next ? h("a", { href: `#/worklist/${offset + r.count}` }, "Next page") : null);
  view.replaceChildren(
    h("h2", {}, `Worklist: ${r.sites.join(", ")}`),
    h("table", {},
      h("caption", {}, "Subjects and the state of their source data verification"),
      h("thead", {}, h("tr", {},
        ...["Subject", "Site", "Status", "Values", "Verified", "Unverified", "Changed since verification", "Open queries", "Deviations"]
          .map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 9 }, "No subjects at your sites yet.")))),
    pager);
}

// ---- subject ----------------------------------------------------------------------------

async function subject(id) {
  say("Loading the subject…");
  const r = await api(`ResearchSubject/${encodeURIComponent(id)}/$sdv`);
  say("");
  const byVisit = new Map();
  for (const item of r.items) {
    const visit = item.type === "ResearchSubject" ? "Enrolment" : item.visit ? `Visit ${item.visit}` : "Without visit";
    if (!byVisit.has(visit)) byVisit.set(visit, []);
    byVisit.get(visit).push(item);
  }
  const sections = [...byVisit.entries()].map(([visit, items]) =>
    h("section", { "aria-labelledby": `visit-${visit.replace(/\W/g, "")}` },
      h("h3", { id: `visit-${visit.replace(/\W/g, "")}` }, visit),
      h("table", {},
        h("caption", {}, `${visit}: values`),
        h("thead", {}, h("tr", {}, ...["Value", "Result", "When", "Version", "Source", "Verification", "Queries", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, items.map((item) => valueRow(id, item))))));
  const queries = r.items.flatMap((item) => item.queries.map((q) => ({ ...q, item })));
  view.replaceChildren(
    h("h2", {}, `Subject ${r.identifier || id}`),
    h("dl", { class: "facts" },
      h("dt", {}, "Site"), h("dd", {}, r.site || ""),
      h("dt", {}, "Status"), h("dd", {}, r.status || ""),
      h("dt", {}, "Values"), h("dd", {}, `${r.values} (${r.verified} verified, ${r.unverified} not verified, ${r.changedSinceVerification} changed since verification)`),
      h("dt", {}, "Open queries"), h("dd", {}, r.openQueries)),
    isSite() ? "" : h("p", {}, h("button", { type: "button", onclick: () => verifyAll(id, r.items) }, "Verify every unverified value")),
    ...sections,
    h("section", { "aria-labelledby": "queries-h" },
      h("h3", { id: "queries-h" }, "Queries"),
      queries.length ? h("ul", { class: "queries" }, queries.map((q) => queryItem(id, q))) : h("p", {}, "No queries.")),
    h("section", { "aria-labelledby": "dev-h" },
      h("h3", { id: "dev-h" }, "Protocol deviations"),
      r.deviations.length
        ? h("ul", {}, r.deviations.map((d) => h("li", {}, `${d.detail || "Deviation"} (${siteTime(d.identified, TZ) || d.detectedIssue})`)))
        : h("p", {}, "No protocol deviations.")),
    h("section", { id: "detail", "aria-live": "polite" }));
}

function valueRow(subjectId, item) {
  const [type, rid, , version] = item.resource.split("/");
  const name = itemName(item);
  const open = item.queries.filter((q) => q.state !== "closed").length;
  return h("tr", {},
    h("th", { scope: "row" }, name),
    h("td", {}, valueText(item)),
    h("td", {}, siteTime(item.effective, TZ)),
    h("td", { class: "num" }, version),
    h("td", {}, item.sources.map((s) => s.system || s.provenance).join("; ") || "entered"),
    h("td", { class: item.verified ? "ok" : "todo" }, verificationText(item)),
    h("td", {}, open ? `${open} open` : item.queries.length ? "closed" : ""),
    h("td", { class: "actions" },
      item.verified || isSite() ? null : h("button", { type: "button", "aria-label": `Verify: ${name}`, onclick: () => verify(subjectId, type, rid) }, "Verify"),
      isSite() ? null : h("button", { type: "button", "aria-label": `Raise query: ${name}`, onclick: () => queryForm(subjectId, type, rid, version, name) }, "Raise query"),
      item.versions.length > 1
        ? h("button", { type: "button", "aria-label": `Changes: ${name}`, onclick: () => showDiff(type, rid, name) }, "Changes")
        : null));
}

function postVerify(type, id) {
  return api(`${type}/${id}/$verify`, { method: "POST", headers: { "content-type": "application/fhir+json" }, body: parameters([]) });
}

async function verify(subjectId, type, id) {
  try {
    await postVerify(type, id);
    await subject(subjectId);
    say(`${type}/${id} verified.`, "ok");
  } catch (e) {
    say(e.message, "error");
  }
}

async function verifyAll(subjectId, items) {
  try {
    let n = 0;
    for (const item of items.filter((i) => !i.verified)) {
      const [type, id] = item.resource.split("/");
      await postVerify(type, id);
      n += 1;
    }
    await subject(subjectId);
    say(`${n} values verified.`, "ok");
  } catch (e) {
    say(e.message, "error");
  }
}

function queryForm(subjectId, type, id, version, name) {
  const detail = document.getElementById("detail");
  const text = h("textarea", { id: "query-text", name: "text", rows: 3, required: true });
  const form = h("form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        await api(`${type}/${id}/$raise-query`, {
          method: "POST",
          headers: { "content-type": "application/fhir+json" },
          body: parameters([{ name: "text", valueString: text.value }, { name: "version", valueInteger: Number(version) }]),
        });
        await subject(subjectId);
        say(`Query raised on ${name}.`, "ok");
      } catch (e) {
        say(e.message, "error");
      }
    },
  },
  h("h3", {}, `Raise a query on ${name} (version ${version})`),
  h("label", { for: "query-text" }, "Question to the site"),
  text,
  h("button", { type: "submit" }, "Send query"));
  detail.replaceChildren(form);
  text.focus();
}

function queryItem(subjectId, q) {
  const id = q.task.split("/")[1];
  const parts = [
    h("strong", {}, `${itemName(q.item)}: ${q.state}`),
    h("p", {}, `Query (${siteTime(q.raised, TZ)}, ${q.raisedBy || "monitor"}): ${q.text}`),
  ];
  if (q.answer) parts.push(h("p", {}, `Answer: ${q.answer}`));
  if (q.correction) parts.push(h("p", {}, `Corrected in ${q.correction}`));
  if (isSite() && q.state === "open") {
    const answer = h("textarea", { id: `answer-${id}`, name: "text", rows: 2, required: true });
    parts.push(h("form", {
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api(`Task/${id}/$answer`, { method: "POST", headers: { "content-type": "application/fhir+json" }, body: parameters([{ name: "text", valueString: answer.value }]) });
          await subject(subjectId);
          say("Answer sent.", "ok");
        } catch (e) {
          say(e.message, "error");
        }
      },
    },
    h("label", { for: `answer-${id}` }, `Answer to the monitor: ${itemName(q.item)}`), answer,
    h("p", {}, "Correct the value itself first, with its reason for change, where the site records it; the answer then names the corrected version."),
    h("button", { type: "submit" }, "Send answer")));
  } else if (!isSite() && q.state !== "closed") {
    parts.push(h("button", {
      type: "button",
      "aria-label": `Close query: ${itemName(q.item)}`,
      onclick: async () => {
        try {
          await api(`Task/${id}/$close`, { method: "POST", headers: { "content-type": "application/fhir+json" }, body: parameters([{ name: "text", valueString: "answer accepted" }]) });
          await subject(subjectId);
          say("Query closed.", "ok");
        } catch (e) {
          say(e.message, "error");
        }
      },
    }, "Close query"));
  }
  return h("li", { class: `query ${q.state}` }, parts);
}

function show(v) {
  if (v === undefined) return "";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

async function showDiff(type, id, name) {
  const detail = document.getElementById("detail");
  try {
    const d = await api(`${type}/${id}/$diff`);
    const c = d.change || {};
    detail.replaceChildren(
      h("h3", { tabindex: "-1", id: "diff-h" }, `Changes of ${name}: version ${d.from} → ${d.to}`),
      h("p", {}, `By ${c.who || "unknown"}, ${siteTime(c.when, TZ)}; reason: ${c.why || "none given"}`),
      h("table", {},
        h("caption", {}, `Differences between versions ${d.from} and ${d.to}`),
        h("thead", {}, h("tr", {}, ...["Element", "Change", "Before", "After"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, d.differences.map((x) => h("tr", {}, h("th", { scope: "row" }, x.path), h("td", {}, x.op), h("td", {}, show(x.old)), h("td", {}, show(x.new)))))));
    document.getElementById("diff-h").focus();
  } catch (e) {
    say(e.message, "error");
  }
}

// ---- frame ------------------------------------------------------------------------------

async function render() {
  const s = session();
  document.getElementById("sign-in").hidden = !!s;
  document.getElementById("sign-out").hidden = !s;
  document.getElementById("who").textContent = s ? `Signed in as ${s.claims.sub} (${(s.claims.trialbridge_sites || []).join(", ")})` : "";
  if (!s) {
    view.replaceChildren();
    return;
  }
  const [, page, arg] = location.hash.split("/");
  try {
    if (page === "subject" && arg) await subject(decodeURIComponent(arg));
    else await worklist(Number(arg) || 0);
    document.getElementById("title").focus();
  } catch (e) {
    say(e.message, "error");
  }
}

document.getElementById("tz").textContent = TZ;
document.getElementById("sign-in-button").addEventListener("click", () =>
  signIn("trialbridge-monitor", "openid user/*.rs").catch((e) => say(e.message, "error")));
document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  location.hash = "#/";
  render();
});
window.addEventListener("hashchange", render);
finishSignIn().catch((e) => say(e.message, "error")).finally(render);
