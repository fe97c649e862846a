// The monitor workspace in a real browser (Debian's chromium, driven by playwright-core):
// sign in through the local issuer (authorization code + PKCE) → worklist → subject → the
// changes between versions → verify a value → raise a query → the site corrects the value and
// answers (the correction through the API, as the site's system makes it; the answer in the page,
// signed in as site staff) → the monitor closes the query; then a
// monitor of site 02 sees nothing of site 01. Every page is screenshotted into OUTDIR and
// checked with axe-core: a serious or critical violation fails the run.
//
// usage: node monitor_flow.mjs ORIGIN SITE_TOKEN OUTDIR

import { launch, finish, fillSignIn, fhir } from "./browser.mjs";

const [origin, siteToken, outdir] = process.argv.slice(2);
const { browser, failures, check } = await launch(outdir);

const signIn = (page, subject, site, role = "monitor") =>
  fillSignIn(page, `${origin}/app/monitor`, subject, site, role);

const api = (method, path, body, reason) => fhir(`${origin}/fhir`, siteToken, method, path, body, reason);

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));

  await page.goto(`${origin}/app/monitor`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await check(page, "monitor-sign-in");
  await signIn(page, "monitor.one@sponsor.example", "mesemcart-site-01");
  await check(page, "dev-issuer-sign-in");
  await page.getByRole("button", { name: "Sign in" }).click();

  // The worklist.
  await page.getByRole("table", { name: /Subjects and the state/ }).waitFor();
  await page.getByText("Signed in as monitor.one@sponsor.example").waitFor();
  const row = page.getByRole("row", { name: /mc-01-001/i });
  await row.waitFor();
  await check(page, "monitor-worklist");

  // The subject, and the changes of the corrected KOOS value.
  await row.getByRole("link").click();
  await page.getByRole("heading", { name: /Subject/ }).waitFor();
  await check(page, "monitor-subject");
  await page.getByRole("button", { name: /^Changes: KOOS/i }).click();
  await page.getByRole("table", { name: /Differences between versions 1 and 2/ }).waitFor();
  await page.getByRole("rowheader", { name: "Observation.valueQuantity.value" }).waitFor();
  await check(page, "monitor-diff");

  // Verify the BMI.
  await page.getByRole("button", { name: /^Verify: Body mass index/ }).click();
  await page.getByText(/verified\.$/).waitFor();
  const bmiRow = page.getByRole("row", { name: /Body mass index/ });
  await bmiRow.getByText("Verified", { exact: true }).waitFor();

  // Raise a query on the KOOS value.
  await page.getByRole("button", { name: /^Raise query: KOOS/i }).click();
  await page.getByLabel("Question to the site").fill("The KOOS pain score in the source form is 75, not 70. Please check.");
  await check(page, "monitor-raise-query");
  await page.getByRole("button", { name: "Send query" }).click();
  await page.getByText(/^Query raised/).waitFor();
  await page.getByText(/: open$/).waitFor();

  // The site corrects the value with a reason for change and answers the query.
  const tasks = await api("GET", "Task?subject=Patient/mc-01-001");
  const task = tasks.entry.map((e) => e.resource).find((t) => t.status === "requested");
  const [, obsId] = task.focus.reference.split("/");
  const obs = await api("GET", `Observation/${obsId}`);
  obs.valueQuantity.value = 75;
  delete obs.meta;
  await api("PUT", `Observation/${obsId}`, obs, "transcription error, corrected from the source form");
  // ... and answers in the page, signed in as site staff.
  const siteContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const sitePage = await siteContext.newPage();
  sitePage.on("pageerror", (e) => failures.push(`site page error: ${e.message}`));
  await signIn(sitePage, "study.nurse@klinikum.example", "mesemcart-site-01", "site");
  await sitePage.getByRole("button", { name: "Sign in" }).click();
  await sitePage.getByRole("row", { name: /mc-01-001/i }).getByRole("link").click();
  await sitePage.getByText(/: open$/).waitFor();
  const strayNull = await sitePage.evaluate(() =>
    [...document.querySelectorAll("#view, #view *")].some((e) =>
      [...e.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim() === "null")));
  if (strayNull) failures.push("the page shows the text null");
  if (await sitePage.getByRole("button", { name: /^(Verify|Raise query|Close query)/ }).count()) {
    failures.push("site staff are offered a monitor's action");
  }
  await sitePage.getByLabel(/^Answer to the monitor/).fill("Transcription error; corrected to 75 as on the form.");
  await check(sitePage, "site-answer-query");
  await sitePage.getByRole("button", { name: "Send answer" }).click();
  await sitePage.getByText("Answer sent.").waitFor();
  await sitePage.getByText(/: answered$/).waitFor();
  await siteContext.close();

  // The monitor sees the answer and the correction, and closes the query.
  await page.reload();
  await page.getByText(/: answered$/).waitFor();
  await page.getByText(/Corrected in Observation\//).waitFor();
  await check(page, "monitor-query-answered");
  await page.getByRole("button", { name: /^Close query: KOOS/i }).click();
  await page.getByText("Query closed.").waitFor();
  await page.getByText(/: closed$/).waitFor();

  // Site isolation in the pages: a monitor of site 02 sees no site-01 subject.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await signIn(page, "monitor.two@sponsor.example", "mesemcart-site-02");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("No subjects at your sites yet.").waitFor();
  await page.goto(`${origin}/app/monitor#/subject/mc-01-001`);
  await page.getByText(/not known|not found|no resource/i).waitFor();
  if (await page.getByText("Body mass index").count()) failures.push("site 02 sees a site-01 value");
  await check(page, "monitor-site-02");
} catch (e) {
  failures.push(`flow: ${e.stack || e}`);
} finally {
  await browser.close();
}
finish(failures, "monitor flow");
