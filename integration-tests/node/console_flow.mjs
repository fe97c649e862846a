// The integrator console of a site gateway in a real browser (Debian's chromium, driven by
// playwright-core): site staff sign in through the store's development issuer (authorization
// code + PKCE) → the message list shows a lab message held as a dead letter (an unknown local
// code) → search → the message with its fields labelled beside its FHIR and ACK → the study's
// code map is fixed in the trial store (as the study administrator does, through the API) →
// replay → the message goes to the store; a second dead letter is discarded with a reason; the
// key list; then a site-02 person is refused. Every page is screenshotted into OUTDIR and
// checked with axe-core: a serious or critical violation fails the run.
//
// usage: node console_flow.mjs GATEWAY_ORIGIN STORE_BASE ADMIN_TOKEN OUTDIR

import { launch, finish, fillSignIn, fhir } from "./browser.mjs";

const [gateway, storeBase, adminToken, outdir] = process.argv.slice(2);
const { browser, failures, check } = await launch(outdir);

async function signIn(page, subject, site) {
  await fillSignIn(page, `${gateway}/app`, subject, site, "site");
  await page.getByRole("button", { name: "Sign in" }).click();
}

const store = (method, path, body) => fhir(storeBase, adminToken, method, path, body);

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && console.log(`browser console: ${m.text()}`));
  page.on("response", (r) => r.status() >= 400 && console.log(`HTTP ${r.status()} ${r.request().method()} ${r.url()}`));
  globalThis.currentPage = page;

  await page.goto(`${gateway}/app`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await page.getByText("Site gateway site-01").waitFor();
  await check(page, "console-sign-in");
  await signIn(page, "it.staff@klinikum.example", "mesemcart-site-01");

  // The message list: the lab messages, newest first, held as dead letters.
  await page.getByText("Signed in as it.staff@klinikum.example").waitFor();
  const table = page.getByRole("table", { name: /Messages, newest first/ });
  await table.waitFor();
  const first = page.getByRole("row", { name: /ORU\^R01 LAB-1001/ });
  await first.getByText("dead", { exact: true }).waitFor();
  await first.getByText(/KNIE-GR/).waitFor();
  await page.getByRole("row", { name: /enrolment/ }).first().getByRole("cell", { name: "MC-01-001", exact: true }).waitFor();
  if ((await page.locator("#now-dead_letters").textContent()) !== "2") failures.push("the counters do not show 2 dead letters");
  await check(page, "console-messages");

  // Search by control id.
  await page.getByLabel(/^Search/).fill("lab-1002");
  await page.getByRole("button", { name: "Search" }).click();
  await page.getByRole("table", { name: /matching “lab-1002”/ }).waitFor();
  if (await page.getByRole("row", { name: /LAB-1001/ }).count()) failures.push("the search for lab-1002 lists LAB-1001");
  await page.getByRole("row", { name: /LAB-1002/ }).waitFor();

  // The dead-letter queue and one message, field by field.
  await page.getByRole("link", { name: "Dead letters" }).click();
  await page.getByRole("heading", { name: "Dead letters" }).waitFor();
  await check(page, "console-dead-letters");
  await page.getByRole("link", { name: "ORU^R01 LAB-1001" }).click();
  await page.getByRole("heading", { name: "ORU^R01 LAB-1001" }).waitFor();
  const pid3 = page.getByRole("row", { name: /PID-3 Patient Identifier List/ });
  await pid3.getByText("4711^^^KH-NORD^MR").waitFor();
  await page.getByRole("row", { name: /OBX-3 Observation Identifier/ }).getByText(/KNIE-GR/).waitFor();
  await page.getByRole("row", { name: /MSA-1 Acknowledgment Code/ }).getByText("AA", { exact: true }).waitFor();
  await page.getByText("Nothing for the trial store.").waitFor();
  await check(page, "console-message");

  // Replaying before the fix keeps it a dead letter.
  await page.getByRole("button", { name: "Replay" }).click();
  await page.getByText(/^Replayed: still dead: the local code 'KNIE-GR'/).waitFor();

  // The study administrator adds the local code to the site's map in the trial store.
  const map = await store("GET", "ConceptMap/mesemcart-site-local-codes");
  const group = map.group.find((g) => g.source === "urn:mesemcart:site-01:local" && g.target === "http://loinc.org");
  group.element.push({ code: "KNIE-GR", target: [{ code: "8302-2", equivalence: "equivalent" }] });
  delete map.meta;
  await store("PUT", "ConceptMap/mesemcart-site-local-codes", map);

  // Replayed now, the message goes to the store with the study's code.
  await page.getByRole("button", { name: "Replay" }).click();
  await page.getByText("Replayed: queued").waitFor();
  await page.getByRole("heading", { name: "What it became (FHIR)" }).waitFor();
  await page.getByText(/"8302-2"/).first().waitFor();
  await check(page, "console-replayed");

  // The other one is a wrong value: discarded with a reason.
  await page.goto(`${gateway}/app#/messages?q=LAB-1002`);
  await page.getByRole("link", { name: "ORU^R01 LAB-1002" }).click();
  await page.getByRole("heading", { name: "ORU^R01 LAB-1002" }).waitFor();
  await page.getByLabel("Reason for discarding").fill("decimal point misplaced; the lab resends the corrected result");
  await page.getByRole("button", { name: "Discard" }).click();
  await page.getByText("Discarded.").waitFor();
  await page.locator("dd", { hasText: /^done$/ }).waitFor();
  await page.getByRole("link", { name: "Dead letters" }).click();
  await page.getByText("No messages.").waitFor();
  await page.waitForFunction(() => document.getElementById("now-dead_letters")?.textContent === "0", null, { timeout: 15000 });

  // The key list.
  await page.getByRole("link", { name: "Key list" }).click();
  await page.getByRole("row", { name: /MC-01-001 KH-NORD 4711/ }).waitFor();
  await check(page, "console-keys");

  // Staff of another site get nothing from this gateway.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await signIn(page, "it.staff@other-hospital.example", "mesemcart-site-02");
  await page.getByText(/takes a site token of mesemcart-site-01/).waitFor();
  if (await page.getByText("LAB-1001").count()) failures.push("site 02 sees a site-01 message");
  await check(page, "console-site-02");
} catch (e) {
  failures.push(`flow: ${e.stack || e}`);
  await globalThis.currentPage?.screenshot({ path: `${outdir}/console-failure.png`, fullPage: true }).catch(() => {});
  console.log(`failed at ${globalThis.currentPage?.url()}: ${await globalThis.currentPage?.locator("#status").textContent().catch(() => "")}`);
} finally {
  await browser.close();
}
finish(failures, "console flow");
