// The pricing table → sign up → free key → PRO with a trial → the trial ends (test clock) and
// is paid → BUSINESS through the portal's plan switch → cancel → back to FREE with the same key,
// in headless Chromium against the real paykey-local binary. Screenshots go to
// $PAYKEY_ARTIFACTS (default ../../artifacts/screenshots).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
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

// Headless Chromium: Playwright gives it a fresh, empty profile; these keep it off the (closed)
// network.
const launch = () => chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  timeout: 30_000,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});

// Pays on the emulator's Checkout page with a card that succeeds; waits for the thanks page.
async function payWithCard(page) {
  await page.fill("#card", "4242 4242 4242 4242");
  await page.fill("#exp", "12 / 34");
  await page.fill("#cvc", "123");
  await page.click("#pay");
  await page.waitForURL(/\/thanks_upgrade$/);
}

// Resolves with the stack's base URL from its "paykey local stack on …" line; log lines of its
// background work may come first (printed).
function onUrlLine(child, resolve) {
  const lines = createInterface({ input: child.stdout });
  let found = false;
  lines.on("line", (l) => {
    const m = !found && l.match(/^paykey local stack on (http:\/\/127\.0\.0\.1:\d+)/);
    if (m) {
      found = true;
      resolve({ child, base: m[1] });
    } else if (!found) {
      console.log(`paykey-local: ${l}`);
    }
  });
}

function startStack(dataDir, catalog = CATALOG) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [], { env: { ...process.env, PAYKEY_PORT: "0", PAYKEY_DATA_DIR: dataDir, PAYKEY_CATALOG: catalog, RUST_LOG: "warn" }, stdio: ["ignore", "pipe", "inherit"] });
    onUrlLine(child, resolve);
    child.once("exit", (code) => reject(new Error(`paykey-local exited with ${code}`)));
  });
}

test("free → trial → paid → another tier → cancel → free, on one key", { timeout: 180_000 }, async () => {
  assert.ok(bin, "PAYKEY_LOCAL_BIN must name the paykey-local binary");
  mkdirSync(shots, { recursive: true });
  const dataDir = mkdtempSync(path.join(tmpdir(), "paykey-browser-"));
  const { child, base } = await startStack(dataDir);
  const browser = await launch();
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
    await payWithCard(page);
    await page.waitForSelector("#thanks");
    await page.waitForSelector("#plan:text('PRO')");
    await page.waitForSelector("#sub-status:text('(trialing)')");
    // the ID token follows the plan without signing in again (refreshed with the refresh token)
    await page.waitForSelector("#token-plan:text('PRO')");
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
    await page.waitForSelector("#token-plan:text('FREE')");
    assert.equal((await page.textContent("#api-key")).trim(), key, "one key for life");
    await tryKey(page, "FREE");
    await shot(page, "09-after-cancel-free.png");
    // signing in again gives the same plan (the stack wrote PRO, then BUSINESS, then FREE)
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
  const { child, base } = await startStack(dataDir, small);
  const browser = await launch();
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

// Issue 26: a metered tier (PRO includes 1,000 requests a month, then ¥0.5 each, quota 5,000):
// 1,200 calls → the usage chart with the included amount, the cap and the projection; the
// customer lowers the spend cap to 1,500 → the key serves 300 more, then 429.
test("usage chart with included amount, spend cap and projected overage; the cap stops the key", { timeout: 120_000 }, async () => {
  const metered = JSON.stringify({ tiers: [
    { name: "FREE", usage_plan_id: "usage-plan-free", quota: { limit: 1000, period: "MONTH" } },
    { name: "PRO", lookup_key: "FMMailPro", usage_plan_id: "usage-plan-pro", quota: { limit: 5000, period: "MONTH" },
      metered: { lookup_key: "FMMailProCalls", included: 1000 } },
  ] });
  mkdirSync(shots, { recursive: true });
  const dataDir = mkdtempSync(path.join(tmpdir(), "paykey-browser-"));
  const { child, base } = await startStack(dataDir, metered);
  const browser = await launch();
  const product = async (key) => (await fetch(base + "/product/hello", { headers: { "x-api-key": key } })).status;
  const saved = [];
  const shot = async (page, name) => { const f = path.join(shots, name); await page.screenshot({ path: f, fullPage: true }); saved.push(f); };
  try {
    const page = await browser.newPage({ locale: "en-US" });
    await page.goto(base + "/");
    await page.waitForSelector("#metered-PRO:text('1,000 requests included, then ¥0.5 per request')");
    await page.fill("#username", "mia");
    await page.fill("#password", "correct horse");
    await page.click("#signup-btn");
    await page.waitForSelector("#plan:text('FREE')");
    await page.click("#choose-PRO");
    await page.waitForURL(/\/stripe\/checkout\/cs_test_/);
    await payWithCard(page);
    await page.waitForSelector("#plan:text('PRO')");
    await page.waitForSelector("#key-box");
    const key = (await page.textContent("#api-key")).trim();
    let served = 0;
    for (let i = 0; i < 1200; i++) served += (await product(key)) === 200 ? 1 : 0;
    assert.equal(served, 1200);
    await page.reload();
    await page.waitForSelector("#usage-chart svg rect.over");
    const caption = await page.textContent("#usage-projection");
    assert.match(caption, /beyond the included 1,000: about ¥[\d,]+ of usage/, caption);
    assert.match(await page.textContent("#usage-chart"), /included 1,000/);
    assert.match(await page.textContent("#usage-chart"), /limit 5,000|spend cap 5,000/);
    assert.match(await page.textContent("#cap-text"), /Spend cap: 5,000 requests a month \(the plan's default; you may set 1,000 to 5,000\): up to ¥2,000 of usage beyond the included requests in a calendar month/);
    await shot(page, "13-usage-chart.png");

    // below the included amount: refused with the range, nothing changed
    await page.fill("#cap", "999");
    await page.click("#set-cap");
    await page.waitForSelector("#error:text('from 1000')");
    await page.fill("#cap", "1500");
    await page.click("#set-cap");
    await page.waitForSelector("#cap-saved:text('Spend cap set to 1,500 requests a month; 300 left this month.')");
    await page.waitForSelector("#cap-text:text('set by you')");
    assert.match(await page.textContent("#cap-text"), /up to ¥250 of usage beyond the included requests in a calendar month/);
    served = 0;
    let refused = 0;
    for (let i = 0; i < 400; i++) (await product(key)) === 200 ? served++ : refused++;
    assert.deepEqual([served, refused], [300, 100], "the cap stops the key at 1,500 this month");
    await page.reload();
    await page.waitForSelector("#usage-text:text('1,500 of 1,500 requests used, 0 left this month')");
    await page.waitForSelector("#usage-alerts:text('monthly limit reached')");
    await shot(page, "14-spend-cap.png");
  } finally {
    await browser.close();
    child.kill();
    rmSync(dataDir, { recursive: true, force: true });
    for (const f of saved) console.log(`screenshot: ${f}`);
  }
});

// Issue 24: the app as it runs against a deployed stack, on a Cognito user pool created on
// moto_server from template.yaml's own UserPool and UserPoolClient properties
// (pool_from_template.py), with paykey-local on the production AWS adapters
// (PAYKEY_BACKEND=aws, which serves the pool's ids in /config.json, so the app signs up and in
// at the user pool itself with amazon-cognito-identity-js, as deployed). The browser's calls to
// https://cognito-idp.us-east-1.amazonaws.com/ go to moto through Playwright's routing, with
// three things moto 5.2.5 does not do as Cognito does, done here instead and each asserted on:
// - SRP: moto answers USER_ID_FOR_SRP with the user's sub; Cognito with the user name (for a
//   pool without aliases, as the template's): rewritten to the name. moto checks no password
//   in SRP at all (a wrong password signs in), so passwords are checked by the local stack's
//   Cognito (infra/local/src/cognito.rs tests), not here.
// - ResendConfirmationCode is not implemented in moto (HTTP 500): answered here with the shape
//   Cognito documents (CodeDeliveryDetails).
// - ConfirmSignUp accepts any code in moto: a wrong code ("000000") is answered here with
//   Cognito's CodeMismatchException, to show the app keeps the user on the code step.
// moto does check: the pool's password policy (sign-up), an unconfirmed user's sign-in
// (UserNotConfirmedException), and it issues refresh tokens whose ID tokens carry the
// attributes as they are now. Its forgotten-password code comes in a response header
// (x-moto-forgot-password-confirmation-code, read here as the email would be); moto refuses only
// wrong codes that start with "moto-confirmation-code:", so the wrong code tried here is one.
// Because SRP checks no password, "signs in after the reset" shows the calls, not that the new
// password is the one that works.
const PAIR = JSON.stringify({ tiers: [
  { name: "FREE", usage_plan_id: "usage-plan-free" },
  { name: "PRO", lookup_key: "FMMailPro", usage_plan_id: "usage-plan-pro" },
] });

test("deployed user pool (moto, template's settings): sign up with email, confirm, resend, upgrade refreshes the token, reset a forgotten password", { timeout: 180_000 }, async () => {
  const moto = process.env.PAYKEY_MOTO_URL;
  assert.ok(moto, "PAYKEY_MOTO_URL must name a moto_server (the test command starts one)");
  mkdirSync(shots, { recursive: true });
  const prefix = `paykey-web-${Math.random().toString(16).slice(2, 10)}`;
  const made = spawnSync(process.env.PAYKEY_PYTHON || "python3", [new URL("./pool_from_template.py", import.meta.url).pathname, moto, prefix], { encoding: "utf8" });
  assert.equal(made.status, 0, made.stderr);
  const { user_pool_id: poolId } = JSON.parse(made.stdout);
  const dataDir = mkdtempSync(path.join(tmpdir(), "paykey-browser-"));
  const { child, base } = await new Promise((resolve, reject) => {
    const c = spawn(bin, [], { env: { ...process.env, PAYKEY_PORT: "0", PAYKEY_DATA_DIR: dataDir, PAYKEY_CATALOG: PAIR,
      PAYKEY_BACKEND: "aws", PAYKEY_AWS_PREFIX: prefix, PAYKEY_AWS_PROVISION: "1", AWS_ENDPOINT_URL: moto,
      AWS_REGION: "us-east-1", AWS_ACCESS_KEY_ID: "testing", AWS_SECRET_ACCESS_KEY: "testing",
      PAYKEY_PRODUCT_NAME: "Acme Maps", RUST_LOG: "warn" }, stdio: ["ignore", "pipe", "inherit"] });
    onUrlLine(c, resolve);
    c.once("exit", (code) => reject(new Error(`paykey-local exited with ${code}`)));
  });
  const browser = await launch();
  const saved = [];
  const shot = async (page, name) => { const f = path.join(shots, name); await page.screenshot({ path: f, fullPage: true }); saved.push(f); };
  const calls = [];
  let resetCode = null;
  const cors = { "access-control-allow-origin": base, "access-control-expose-headers": "x-amzn-requestid" };
  const answer = (route, status, body) => route.fulfill({ status, headers: { ...cors, "content-type": "application/x-amz-json-1.1" }, body: JSON.stringify(body) });
  try {
    const context = await browser.newContext();
    await context.route("https://cognito-idp.us-east-1.amazonaws.com/**", async (route) => {
      const req = route.request();
      if (req.method() === "OPTIONS") {
        return route.fulfill({ status: 200, headers: { ...cors, "access-control-allow-methods": "POST", "access-control-allow-headers": "content-type,x-amz-target,x-amz-user-agent,cache-control" } });
      }
      const target = req.headers()["x-amz-target"] || "";
      const op = target.split(".").pop();
      const body = JSON.parse(req.postData() || "{}");
      calls.push(op === "InitiateAuth" ? `InitiateAuth:${body.AuthFlow}` : op);
      if (op === "ResendConfirmationCode") {
        return answer(route, 200, { CodeDeliveryDetails: { AttributeName: "email", DeliveryMedium: "EMAIL", Destination: "d***@e***" } });
      }
      if (op === "ConfirmSignUp" && body.ConfirmationCode === "000000") {
        return answer(route, 400, { __type: "CodeMismatchException", message: "Invalid verification code provided, please try again." });
      }
      const r = await fetch(moto + "/", { method: "POST", headers: { "content-type": "application/x-amz-json-1.1", "x-amz-target": target }, body: req.postData() });
      let text = await r.text();
      const code = r.headers.get("x-moto-forgot-password-confirmation-code");
      if (code) resetCode = code;
      if (op === "InitiateAuth" && body.AuthFlow === "USER_SRP_AUTH" && r.ok) {
        const j = JSON.parse(text);
        j.ChallengeParameters.USER_ID_FOR_SRP = body.AuthParameters.USERNAME;
        text = JSON.stringify(j);
      }
      return route.fulfill({ status: r.status, headers: { ...cors, "content-type": "application/x-amz-json-1.1" }, body: text });
    });
    // the app is pointed at the pool made from the template (not one paykey-local provisioned)
    const served = await (await fetch(base + "/config.json")).json();
    assert.equal(served.userPoolId, poolId);
    assert.equal(served.localCognito, undefined);
    const page = await context.newPage();
    await page.goto(base + "/");
    await page.waitForSelector("#tier-PRO");
    assert.equal(await page.textContent("#product-name"), "Acme Maps", "the product's name comes from /config.json");
    assert.equal(await page.title(), "Acme Maps");
    assert.match(await page.textContent("#tier-PRO .price"), /^¥980 \/ month$/, "the price and its interval come from GET /plans");

    // the pool's password policy (template: 8+ characters, lower case and a number) is moto's check
    await page.fill("#username", "dana");
    await page.fill("#email", "dana@example.com");
    await page.fill("#password", "short");
    await page.click("#signup-btn");
    await page.waitForSelector("#error:not(:empty)");
    assert.match(await page.textContent("#error"), /[Pp]assword/);
    assert.ok(!calls.includes("InitiateAuth:USER_SRP_AUTH"), "no sign-in after a refused sign-up");

    await page.fill("#password", "correct horse 9");
    await page.click("#signup-btn");
    await page.waitForSelector("#signin[data-step='confirm']");
    assert.match(await page.textContent("#auth-info"), /confirmation code/);
    await shot(page, "13-pool-confirm.png");
    await page.click("#resend-btn");
    await page.waitForSelector("#auth-info:text('We sent a new code to d***@e***.')");
    await page.fill("#code", "000000");
    await page.click("#confirm-btn");
    await page.waitForSelector("#error:text('Invalid verification code provided, please try again.')");
    assert.equal(await page.getAttribute("#signin", "data-step"), "confirm", "a wrong code keeps the code step");
    await page.fill("#code", "123456");
    await page.click("#confirm-btn");
    await page.waitForSelector("#plan:text('FREE')");
    // the first SignUp is the one moto refused (password policy)
    assert.deepEqual(calls.slice(0, 6), ["SignUp", "SignUp", "ResendConfirmationCode", "ConfirmSignUp", "ConfirmSignUp", "InitiateAuth:USER_SRP_AUTH"]);
    assert.equal(await page.textContent("#who"), "dana");
    assert.equal(await page.textContent("#token-plan"), "FREE");
    await page.click("#free-key");
    await page.waitForSelector("#key-box");
    const key = (await page.textContent("#api-key")).trim();
    assert.match(key, /\S{20,}/, "API Gateway's (moto's) key is shown");

    // PRO: checkout on the Stripe emulator; back on the thanks page the ID token is refreshed
    // and carries the plan the stack wrote into the user pool
    await page.click("#choose-PRO");
    await page.waitForURL(/\/stripe\/checkout\/cs_test_/);
    await page.fill("#card", "4242 4242 4242 4242");
    await page.fill("#exp", "12 / 34");
    await page.fill("#cvc", "123");
    await page.click("#pay");
    await page.waitForURL(/\/thanks_upgrade/);
    await page.waitForSelector("#plan:text('PRO')");
    await page.waitForSelector("#token-plan:text('PRO')");
    assert.ok(calls.includes("InitiateAuth:REFRESH_TOKEN_AUTH"), `the refresh token was used: ${calls}`);
    assert.equal((await page.textContent("#api-key")).trim(), key, "the same key, now PRO");
    await shot(page, "14-pool-upgraded-token-refreshed.png");

    // an unconfirmed user who signs in (here: after a reload) is asked for the code
    await page.click("#signout");
    await page.fill("#username", "erin");
    await page.fill("#email", "erin@example.com");
    await page.fill("#password", "correct horse 8");
    await page.click("#signup-btn");
    await page.waitForSelector("#signin[data-step='confirm']");
    await page.reload();
    await page.fill("#username", "erin");
    await page.fill("#password", "correct horse 8");
    await page.click("#signin-btn");
    await page.waitForSelector("#signin[data-step='confirm']");
    assert.equal(calls.filter((c) => c === "InitiateAuth:USER_SRP_AUTH").length, 2, "moto refused the unconfirmed sign-in");
    await page.reload();
    // forgotten password: a code by "email" (moto's header), then the new password signs in
    await page.fill("#username", "dana");
    await page.click("#forgot-btn");
    await page.waitForSelector("#signin[data-step='forgot']");
    assert.ok(resetCode, "moto issued a reset code");
    await page.fill("#code", "moto-confirmation-code:000000");
    await page.fill("#password", "another horse 7");
    await page.click("#reset-btn");
    await page.waitForSelector("#error:not(:empty)");
    assert.equal(await page.getAttribute("#signin", "data-step"), "forgot", "a wrong reset code is refused");
    await page.fill("#code", resetCode);
    await page.click("#reset-btn");
    await page.waitForSelector("#plan:text('PRO')");
    assert.equal(await page.textContent("#token-plan"), "PRO");
    assert.ok(calls.includes("ConfirmForgotPassword"));
    await shot(page, "15-pool-password-reset.png");
  } finally {
    await browser.close();
    child.kill();
    rmSync(dataDir, { recursive: true, force: true });
    for (const f of saved) console.log(`screenshot: ${f}`);
  }
});
