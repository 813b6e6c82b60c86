// Sign in → upgrade → pay → thanks (key visible) → PRO API → portal → cancel → FREE, in
// headless Chromium against the real paykey-local binary. Screenshots go to
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

function startStack(dataDir) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [], { env: { ...process.env, PAYKEY_PORT: "0", PAYKEY_DATA_DIR: dataDir, RUST_LOG: "warn" }, stdio: ["ignore", "pipe", "inherit"] });
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (l) => {
      const m = l.match(/on (http:\/\/127\.0\.0\.1:\d+)/);
      m ? resolve({ child, base: m[1] }) : reject(new Error(`unexpected first line: ${l}`));
    });
    child.once("exit", (code) => reject(new Error(`paykey-local exited with ${code}`)));
  });
}

test("upgrade to PRO, see the key, cancel in the portal, back to FREE", { timeout: 120_000 }, async () => {
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
  try {
    const page = await browser.newPage();
    await page.goto(base + "/");
    await page.fill("#username", "alice");
    await page.fill("#password", "correct horse");
    await page.click("#signup-btn");
    await page.waitForSelector("#plan:text('FREE')");
    await shot(page, "01-signed-in-free.png");

    await page.click("#upgrade");
    await page.waitForURL(/\/stripe\/checkout\/cs_test_/);
    await assert.doesNotReject(page.waitForSelector("text=FMMail PRO"));
    await page.fill("#card", "4000 0000 0000 0002");
    await page.click("#pay");
    await page.waitForSelector("#error:text('Your card was declined.')");
    await shot(page, "02-checkout-declined.png");
    await page.fill("#card", "4242 4242 4242 4242");
    await page.fill("#exp", "12 / 34");
    await page.fill("#cvc", "123");
    await shot(page, "03-checkout-filled.png");
    await page.click("#pay");

    await page.waitForURL(/\/thanks_upgrade$/);
    await page.waitForSelector("#thanks");
    await page.waitForSelector("#plan:text('PRO')");
    const key = (await page.textContent("#api-key")).trim();
    assert.match(key, /^[0-9a-f]{64}$/, "the PRO API key is shown");
    await page.click("#try");
    await page.waitForSelector("#try-result:text('200')");
    await shot(page, "04-thanks-pro-key.png");

    await page.click("#portal");
    await page.waitForURL(/\/stripe\/portal\/bps_/);
    await page.waitForSelector("#invoices");
    await shot(page, "05-portal.png");
    await page.click("#cancel");
    await page.waitForSelector("#status:text('canceled')");
    await shot(page, "06-portal-canceled.png");
    await page.click("#return");
    await page.waitForURL(base + "/");
    // the cancellation webhook may still be on its way: reload until the plan shows FREE
    for (let i = 0; i < 150 && (await page.textContent("#plan")) !== "FREE"; i++) {
      await page.waitForTimeout(200);
      await page.reload();
      await page.waitForSelector("#plan:not(:text('…'))");
    }
    assert.equal(await page.textContent("#plan"), "FREE");
    await page.click("#try");
    await page.waitForSelector("#try-result:text('403')");
    await shot(page, "07-after-cancel-free.png");
  } finally {
    await browser.close();
    child.kill();
    rmSync(dataDir, { recursive: true, force: true });
    for (const f of saved) console.log(`screenshot: ${f}`);
  }
});
