// The pricing table → sign up → free key → PRO with a trial → the trial ends (test clock) and
// is paid → BUSINESS through the portal's plan switch → cancel → back to FREE with the same key,
// in headless Chromium against the real paykey-local binary. Screenshots go to
// $PAYKEY_ARTIFACTS (default ../../artifacts/screenshots).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const bin = process.env.PAYKEY_LOCAL_BIN;
const chromiumPath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const shots = path.resolve(process.env.PAYKEY_ARTIFACTS || new URL("../../artifacts/screenshots", import.meta.url).pathname);

// The local stack's catalog with a 14-day trial on PRO.
const CATALOG = JSON.stringify({ tiers: [
  { name: "FREE", usage_plan_id: "usage-plan-free", quota: { limit: 1000, period: "MONTH" } },
  { name: "PRO", lookup_key: "FMMailPro", usage_plan_id: "usage-plan-pro", trial_days: 14, quota: { limit: 100000, period: "MONTH" } },
  { name: "BUSINESS", lookup_key: "FMMailBusiness", usage_plan_id: "usage-plan-business", quota: { limit: 1000000, period: "MONTH" } },
] });

function startStack(dataDir) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [], { env: { ...process.env, PAYKEY_PORT: "0", PAYKEY_DATA_DIR: dataDir, PAYKEY_CATALOG: CATALOG, RUST_LOG: "warn" }, stdio: ["ignore", "pipe", "inherit"] });
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (l) => {
      const m = l.match(/on (http:\/\/127\.0\.0\.1:\d+)/);
      m ? resolve({ child, base: m[1] }) : reject(new Error(`unexpected first line: ${l}`));
    });
    child.once("exit", (code) => reject(new Error(`paykey-local exited with ${code}`)));
  });
}

test("free → trial → paid → another tier → cancel → free, on one key", { timeout: 180_000 }, async () => {
  assert.ok(bin, "PAYKEY_LOCAL_BIN must name the paykey-local binary");
  mkdirSync(shots, { recursive: true });
  const dataDir = mkdtempSync(path.join(tmpdir(), "paykey-browser-"));
  const { child, base } = await startStack(dataDir);
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    timeout: 30_000,
    // Playwright gives it a fresh, empty profile; these keep it off the (closed) network.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const saved = [];
  const shot = async (page, name) => {
    const file = path.join(shots, name);
    await page.screenshot({ path: file, fullPage: true });
    saved.push(file);
  };
  // Reload until the plan shows `want` (a webhook may still be on its way).
  const untilPlan = async (page, want) => {
    for (let i = 0; i < 150 && (await page.textContent("#plan")) !== want; i++) {
      await page.waitForTimeout(200);
      await page.reload();
      await page.waitForSelector("#plan:not(:text('…'))");
    }
    assert.equal(await page.textContent("#plan"), want);
  };
  const tryKey = async (page, tier) => {
    await page.click("#try");
    await page.waitForSelector(`#try-result:text('200 Hello from the API (${tier})')`);
  };
  try {
    const page = await browser.newPage();
    await page.goto(base + "/");
    // the React build (infra/web) is what the stack serves, not the built-in fallback page
    await page.waitForSelector("main[data-app='paykey-react']");
    await page.waitForSelector("#tier-BUSINESS");
    assert.match(await page.textContent("#tier-PRO"), /¥980/);
    assert.match(await page.textContent("#tier-PRO"), /14-day free trial/);
    await shot(page, "01-pricing.png");

    await page.fill("#username", "alice");
    await page.fill("#password", "correct horse");
    await page.click("#signup-btn");
    await page.waitForSelector("#plan:text('FREE')");
    assert.equal(await page.textContent("#token-plan"), "FREE", "UpgradeContent reads custom:plan_type from the ID token");
    assert.equal(await page.isVisible("#upgrade"), true);
    await page.click("#free-key");
    await page.waitForSelector("#key-box:not(.hidden)");
    const key = (await page.textContent("#api-key")).trim();
    assert.match(key, /^[0-9a-f]{64}$/, "the free key is shown");
    await tryKey(page, "FREE");
    await shot(page, "02-free-key.png");

    await page.click("#choose-PRO");
    await page.waitForURL(/\/stripe\/checkout\/cs_test_/);
    await page.waitForSelector("text=Start 14-day trial");
    await page.fill("#card", "4000 0000 0000 0002");
    await page.click("#pay");
    await page.waitForSelector("#error:text('Your card was declined.')");
    await shot(page, "03-checkout-declined.png");
    await page.fill("#card", "4242 4242 4242 4242");
    await page.fill("#exp", "12 / 34");
    await page.fill("#cvc", "123");
    await page.click("#pay");
    await page.waitForURL(/\/thanks_upgrade$/);
    await page.waitForSelector("#thanks");
    await page.waitForSelector("#plan:text('PRO')");
    await page.waitForSelector("#sub-status:text('(trialing)')");
    assert.match(await page.textContent("#trial"), /^Trial ends on \d{4}-\d{2}-\d{2}$/);
    assert.equal((await page.textContent("#api-key")).trim(), key, "the same key, now PRO");
    await tryKey(page, "PRO");
    assert.equal(await page.isVisible("#upgrade"), false, "no upgrade button on a paid tier");
    assert.equal(await page.isVisible("#portal"), true, "the billing portal button");
    await shot(page, "04-trialing-pro.png");

    // the trial ends: the emulator's test clock moves 15 days, the card is charged
    const r = await fetch(base + "/stripe/_emulator/advance", { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "seconds=1296000" });
    assert.equal(r.status, 200);
    for (let i = 0; i < 150 && (await page.textContent("#sub-status")) !== "(active)"; i++) {
      await page.waitForTimeout(200);
      await page.reload();
      await page.waitForSelector("#plan:not(:text('…'))");
    }
    assert.equal(await page.textContent("#sub-status"), "(active)");
    await shot(page, "05-paid-pro.png");

    // BUSINESS while on PRO: the billing portal's plan switch, not a second subscription
    await page.click("#choose-BUSINESS");
    await page.waitForURL(/\/stripe\/portal\/bps_/);
    await shot(page, "06-portal-switch.png");
    await page.click("button.switch[data-lookup-key='FMMailBusiness']");
    await page.waitForSelector("#plan:text('FMMail BUSINESS')");
    await shot(page, "07-portal-switched.png");
    await page.click("#return");
    await page.waitForURL(base + "/");
    await untilPlan(page, "BUSINESS");
    assert.equal((await page.textContent("#api-key")).trim(), key);
    await tryKey(page, "BUSINESS");
    await shot(page, "08-business.png");

    // cancel in the portal: back to FREE, the key keeps working on the free plan
    await page.click("#portal");
    await page.waitForURL(/\/stripe\/portal\/bps_/);
    await page.click("#cancel");
    await page.waitForSelector("#status:text('canceled')");
    await page.click("#return");
    await page.waitForURL(base + "/");
    await untilPlan(page, "FREE");
    assert.equal((await page.textContent("#api-key")).trim(), key, "one key for life");
    await tryKey(page, "FREE");
    await shot(page, "09-after-cancel-free.png");
    // signing in again refreshes the token's custom:plan_type (FREE again after the cancel;
    // the stack wrote PRO, then BUSINESS, then FREE)
    await page.click("#signout");
    await page.fill("#username", "alice");
    await page.fill("#password", "correct horse");
    await page.click("#signin-btn");
    await page.waitForSelector("#plan:text('FREE')");
    assert.equal(await page.textContent("#token-plan"), "FREE");
  } finally {
    await browser.close();
    child.kill();
    rmSync(dataDir, { recursive: true, force: true });
    for (const f of saved) console.log(`screenshot: ${f}`);
  }
});

// Issue 12: the usage bar, a rotation with a grace (both keys work, then only the new one),
// and a small quota exhausted on the local stack (429 Limit Exceeded).
test("usage bar, key rotation with a grace, quota exhausted", { timeout: 120_000 }, async () => {
  const small = JSON.stringify({ tiers: [
    { name: "FREE", usage_plan_id: "usage-plan-free", quota: { limit: 6, period: "MONTH" } },
    { name: "PRO", lookup_key: "FMMailPro", usage_plan_id: "usage-plan-pro" },
  ] });
  mkdirSync(shots, { recursive: true });
  const dataDir = mkdtempSync(path.join(tmpdir(), "paykey-browser-"));
  const { child, base } = await new Promise((resolve, reject) => {
    const c = spawn(bin, [], { env: { ...process.env, PAYKEY_PORT: "0", PAYKEY_DATA_DIR: dataDir, PAYKEY_CATALOG: small, RUST_LOG: "warn" }, stdio: ["ignore", "pipe", "inherit"] });
    createInterface({ input: c.stdout }).once("line", (l) => {
      const m = l.match(/on (http:\/\/127\.0\.0\.1:\d+)/);
      m ? resolve({ child: c, base: m[1] }) : reject(new Error(`unexpected first line: ${l}`));
    });
  });
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, timeout: 30_000,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
  const product = async (key) => (await fetch(base + "/product/hello", { headers: { "x-api-key": key } }));
  const saved = [];
  try {
    const page = await browser.newPage();
    await page.goto(base + "/");
    await page.fill("#username", "ruth");
    await page.fill("#password", "correct horse");
    await page.click("#signup-btn");
    await page.waitForSelector("#plan:text('FREE')");
    await page.click("#free-key");
    await page.waitForSelector("#key-box:not(.hidden)");
    const oldKey = (await page.textContent("#api-key")).trim();
    for (let i = 0; i < 2; i++) assert.equal((await product(oldKey)).status, 200);
    await page.reload();
    await page.waitForSelector("#usage-text:text('2 of 6 requests used, 4 left this month')");
    let file = path.join(shots, "10-usage-bar.png"); await page.screenshot({ path: file, fullPage: true }); saved.push(file);

    await page.fill("#grace", "2");
    await page.click("#rotate");
    await page.waitForSelector("#rotated:text('New key issued')");
    const newKey = (await page.textContent("#api-key")).trim();
    assert.notEqual(newKey, oldKey);
    assert.equal((await product(oldKey)).status, 200, "the old key works in its grace");
    assert.equal((await product(newKey)).status, 200, "so does the new one");
    file = path.join(shots, "11-rotated.png"); await page.screenshot({ path: file, fullPage: true }); saved.push(file);
    await new Promise((r) => setTimeout(r, 3500));
    assert.equal((await product(oldKey)).status, 403, "after the grace only the new key works");
    // 6 − 2 − 1 (old, in its grace) − 1 (new) = 2 left
    for (let i = 0; i < 2; i++) assert.equal((await product(newKey)).status, 200);
    const refused = await product(newKey);
    assert.equal(refused.status, 429);
    assert.equal((await refused.json()).message, "Limit Exceeded");
    await page.reload();
    await page.waitForSelector("#usage-text:text('0 left')");
    file = path.join(shots, "12-quota-exhausted.png"); await page.screenshot({ path: file, fullPage: true }); saved.push(file);
  } finally {
    await browser.close();
    child.kill();
    rmSync(dataDir, { recursive: true, force: true });
    for (const f of saved) console.log(`screenshot: ${f}`);
  }
});
