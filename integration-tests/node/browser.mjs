// What the browser flows share: Debian's chromium driven by playwright-core, and a check of
// each page (a screenshot into OUTDIR, axe-core run through the DevTools protocol so that the
// page's CSP stays on; a serious or critical violation is a failure).

import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

/** Starts the browser; `failures` collects what fails the run. */
export async function launch(outdir) {
  mkdirSync(outdir, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.TRIALBRIDGE_TEST_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const failures = [];
  async function check(page, name) {
    await page.screenshot({ path: `${outdir}/${name}.png`, fullPage: true });
    await page.evaluate(axeSource);
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
    for (const v of result.violations.filter((v) => v.impact === "serious" || v.impact === "critical")) {
      failures.push(`${name}: ${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    }
    console.log(`page ${name}: ${result.violations.length} axe findings, screenshot ${outdir}/${name}.png`);
  }
  return { browser, failures, check };
}

/** Ends a run: the failures, if any, on stderr and a non-zero exit. */
export function finish(failures, name) {
  if (failures.length) {
    console.error(failures.join("\n"));
    process.exit(1);
  }
  console.log(`${name}: ok`);
}

/** Opens `pageUrl`, asks to sign in and fills the development issuer's form (who, role, the
 * one site); the caller presses its "Sign in". */
export async function fillSignIn(page, pageUrl, subject, site, role) {
  await page.goto(pageUrl);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/dev-issuer\/authorize/);
  await page.getByLabel("Your name or e-mail").fill(subject);
  await page.getByLabel("Role").selectOption(role);
  for (const box of await page.getByRole("checkbox").all()) await box.uncheck();
  await page.getByLabel(site).check();
}

/** A FHIR call with `token` (what a site's or the sponsor's system does beside the pages). */
export async function fhir(base, token, method, path, body, reason) {
  const headers = { authorization: `Bearer ${token}`, accept: "application/fhir+json" };
  if (body) headers["content-type"] = "application/fhir+json";
  if (reason) headers["x-reason-for-change"] = reason;
  const r = await fetch(`${base}/${path}`, { method, headers, body: body && JSON.stringify(body) });
  const json = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}
