//! The demo front end. The React app's production build (`infra/web`, `npm run build`) when
//! there is one: its files are read once at start from `PAYKEY_WEB_DIR` (default
//! `infra/web/dist` of this checkout). Without a build, [`PAGE`]: the same flow in one page of
//! plain JavaScript, calling the API exactly as a front end would (`Authorization: <ID
//! token>`): the pricing table from `GET /plans`, the free key (`POST /api-key`), a checkout
//! per tier (answered with the billing portal when switching tiers), `/account`.

use std::collections::HashMap;
use std::path::Path;

/// A built front end, in memory: `/index.html` and `/assets/…`.
#[derive(Debug, Clone, Default)]
pub struct Build {
    files: HashMap<String, (&'static str, Vec<u8>)>,
}

fn mime(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

impl Build {
    /// The build in `dir` (`index.html` and `assets/`); `Ok(None)` when there is no `index.html`.
    pub fn load(dir: &Path) -> std::io::Result<Option<Self>> {
        let index = dir.join("index.html");
        if !index.is_file() {
            return Ok(None);
        }
        let mut files = HashMap::new();
        files.insert("/index.html".to_string(), (mime("index.html"), std::fs::read(&index)?));
        let assets = dir.join("assets");
        if assets.is_dir() {
            for entry in std::fs::read_dir(&assets)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    files.insert(format!("/assets/{name}"), (mime(&name), std::fs::read(entry.path())?));
                }
            }
        }
        Ok(Some(Self { files }))
    }

    /// (content type, bytes) of `/index.html` or `/assets/<name>`.
    pub fn get(&self, path: &str) -> Option<(&'static str, &[u8])> {
        self.files.get(path).map(|(m, b)| (*m, b.as_slice()))
    }

    /// Bytes of every file (for the start-up line).
    pub fn size(&self) -> usize {
        self.files.values().map(|(_, b)| b.len()).sum()
    }
}

pub const PAGE: &str = concat!(
    r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>paykey · FMMail</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
"##,
    include_str!("../../web/src/styles.css"),
    r##"</style></head>
<body><main>
<h1>FMMail <span id="brand-plan"></span></h1>
<div id="banner"></div>
<div id="plans" aria-label="Plans"></div>
<section id="signin">
  <label for="username">Username</label><input id="username" autocomplete="username">
  <label for="password">Password</label><input id="password" type="password" autocomplete="current-password">
  <button id="signin-btn">Sign in</button><button id="signup-btn" class="secondary">Create account</button>
</section>
<section id="account" class="hidden">
  <p>Signed in as <b id="who"></b> · <a href="#" id="signout">sign out</a></p>
  <p>Plan: <span class="plan" id="plan">…</span> <span id="sub-status"></span></p>
  <p id="period" class="hidden"></p>
  <p id="trial" class="hidden"></p>
  <div id="key-box" class="hidden"><p>Your API key (<span id="key-plan"></span>):</p><p><code id="api-key"></code></p>
    <div id="usage" class="hidden"><div class="bar"><div id="usage-fill"></div></div><p id="usage-text" class="muted"></p></div>
    <label for="grace">Keep the old key working for (seconds)</label><input id="grace" type="number" min="0" value="0">
    <button id="rotate" class="secondary">Rotate key</button><p id="rotated"></p></div>
  <button id="free-key" class="hidden secondary">Get a free API key</button>
  <button id="upgrade" class="hidden">Upgrade to PRO</button>
  <button id="portal" class="hidden secondary">Open billing portal</button>
  <button id="try" class="hidden secondary">Call the API</button>
  <p id="try-result"></p>
</section>
<p id="error" class="err" role="alert"></p>
</main>
<script>
const API = "/api";
const $ = (id) => document.getElementById(id);
const token = () => localStorage.getItem("paykey.idToken");
function show(id, on) { $(id).classList.toggle("hidden", !on); }
function fail(msg) { $("error").textContent = msg; }

async function cognito(action, body) {
  const r = await fetch(`/cognito/${action}`, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const j = await r.json();
  if (!r.ok) throw new Error(j.message || r.statusText);
  return j;
}
async function api(path, init = {}) {
  const r = await fetch(API + path, {...init, headers: {...(init.headers || {}), Authorization: token()}});
  const j = await r.json().catch(() => ({}));
  if (r.status === 401) { localStorage.removeItem("paykey.idToken"); render(); throw new Error("Please sign in again."); }
  if (!r.ok) throw new Error(j.message || `HTTP ${r.status}`);
  return j;
}
async function signIn() {
  fail("");
  try {
    const j = await cognito("sign-in", {username: $("username").value, password: $("password").value});
    localStorage.setItem("paykey.idToken", j.AuthenticationResult.IdToken);
    localStorage.setItem("paykey.user", $("username").value);
    await render();
  } catch (e) { fail(e.message); }
}
async function signUp() {
  fail("");
  try { await cognito("sign-up", {username: $("username").value, password: $("password").value}); await signIn(); }
  catch (e) { fail(e.message); }
}
let polls = 0;
let plans = [];
let current = null;
const money = (p) => p && p.unit_amount != null ? (p.currency === "jpy" ? `¥${p.unit_amount.toLocaleString()}` : `${(p.unit_amount / 100).toFixed(2)} ${p.currency.toUpperCase()}`) : "";
async function loadPlans() {
  try { plans = (await (await fetch(API + "/plans")).json()).plans || []; } catch (e) { plans = []; }
}
function renderPlans() {
  $("plans").innerHTML = "";
  for (const t of plans) {
    const card = document.createElement("div");
    card.className = "tier" + (current === t.name ? " current" : "");
    card.id = `tier-${t.name}`;
    const quota = t.quota ? `${t.quota.limit.toLocaleString()} requests / ${t.quota.period.toLowerCase()}` : "no API key";
    card.innerHTML = `<h3>${t.name}</h3><div>${t.lookup_key ? money(t.price) + " / month" : "Free"}</div><div class="muted">${quota}</div>` +
      (t.trial_days ? `<div>${t.trial_days}-day free trial</div>` : "");
    if (t.lookup_key && token() && current !== t.name) {
      const b = document.createElement("button");
      b.id = `choose-${t.name}`; b.textContent = `Choose ${t.name}`; b.onclick = () => choose(t.lookup_key);
      card.appendChild(b);
    }
    $("plans").appendChild(card);
  }
}
async function choose(lookupKey) {
  fail("");
  try {
    // A checkout page, or the billing portal when switching between paid tiers.
    const j = await api("/checkout-sessions", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({lookup_key: lookupKey})});
    location.href = j.url;
  } catch (e) { fail(e.message); }
}
async function render() {
  if (!plans.length) await loadPlans();
  const path = location.pathname;
  // ?status=pending: paid, but the key is still being issued (the webhook finishes it).
  const pending = path === "/thanks_upgrade" && new URLSearchParams(location.search).get("status") === "pending";
  $("banner").innerHTML = pending ? '<div class="banner ok" id="pending">Payment received: your key is being set up…</div>'
    : path === "/thanks_upgrade" ? '<div class="banner ok" id="thanks">Thanks! Your plan is active.</div>'
    : path === "/canceled_upgrade" ? '<div class="banner warn" id="canceled">Checkout was canceled: nothing was charged.</div>' : "";
  const signedIn = !!token();
  show("signin", !signedIn); show("account", signedIn);
  if (!signedIn) { current = null; renderPlans(); return; }
  $("who").textContent = localStorage.getItem("paykey.user") || "";
  try {
    const a = await api("/account");
    $("plan").textContent = a.plan; $("brand-plan").textContent = a.plan;
    current = a.plan; renderPlans();
    const tier = plans.find((t) => t.name === a.plan);
    const paid = !!(tier && tier.lookup_key);
    show("trial", !!a.trial_end && a.subscription_status === "trialing");
    $("trial").textContent = a.trial_end ? `Trial ends on ${a.trial_end.slice(0, 10)}` : "";
    $("sub-status").textContent = a.subscription_status ? `(${a.subscription_status})` : "";
    show("period", !!a.current_period_end);
    $("period").textContent = a.current_period_end ? (a.cancel_at_period_end ? `Ends on ${a.current_period_end.slice(0, 10)}` : `Renews on ${a.current_period_end.slice(0, 10)}`) : "";
    const key = a.api_key && a.api_key.enabled ? a.api_key.value : null;
    show("key-box", !!key); $("api-key").textContent = key || ""; $("key-plan").textContent = a.plan;
    const u = a.usage;
    show("usage", !!u);
    if (u) {
      // What the period's quota has lost (a rotated key starts with its predecessor's remaining).
      const spent = Math.max(0, u.limit - u.remaining);
      $("usage-fill").style.width = `${Math.min(100, (spent * 100) / Math.max(1, u.limit))}%`;
      $("usage-text").textContent = `${spent.toLocaleString()} of ${u.limit.toLocaleString()} requests used, ${u.remaining.toLocaleString()} left this ${u.period.toLowerCase()} (${u.period_start} – ${u.period_end}, UTC)` +
        (u.billing_period_end ? `; billing period ends ${u.billing_period_end.slice(0, 10)}` : "");
    }
    const freeTier = plans.find((t) => !t.lookup_key);
    show("free-key", !key && !paid && !!(freeTier && freeTier.has_api_key));
    const first = plans.find((t) => t.lookup_key);
    $("upgrade").textContent = first ? `Upgrade to ${first.name}` : "Upgrade";
    show("upgrade", !paid && !!first); show("portal", a.has_billing_account); show("try", !!(a.api_key));
    window.lastKey = a.api_key ? a.api_key.value : null;
    if (pending) {
      if (paid && key) { history.replaceState(null, "", "/thanks_upgrade"); return render(); }
      if (polls++ < 60) setTimeout(render, 2000);
    }
  } catch (e) { fail(e.message); }
}
$("signin-btn").onclick = signIn;
$("signup-btn").onclick = signUp;
$("signout").onclick = (e) => { e.preventDefault(); localStorage.clear(); history.replaceState(null, "", "/"); render(); };
$("upgrade").onclick = () => choose((plans.find((t) => t.lookup_key) || {lookup_key: "FMMailPro"}).lookup_key);
$("rotate").onclick = async () => {
  fail("");
  try {
    const grace = parseInt($("grace").value || "0", 10);
    const r = await api("/api-key/rotate", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({grace_seconds: grace, request_id: crypto.randomUUID()})});
    window.previousKey = window.lastKey;
    $("rotated").textContent = `New key issued; the old one works until ${r.previous_key_until}.`;
    await render();
  } catch (e) { fail(e.message); }
};
$("free-key").onclick = async () => {
  fail("");
  try { await api("/api-key", {method: "POST"}); await render(); } catch (e) { fail(e.message); }
};
$("portal").onclick = async () => {
  fail("");
  try { location.href = (await api("/create-billing-portal-by-user")).billing_portal_url; } catch (e) { fail(e.message); }
};
$("try").onclick = async () => {
  const r = await fetch("/product/hello", {headers: {"x-api-key": window.lastKey || ""}});
  const j = await r.json();
  $("try-result").textContent = `${r.status} ${j.message}` + (j.tier ? ` (${j.tier})` : "");
};
render();
</script></body></html>
"##
);
