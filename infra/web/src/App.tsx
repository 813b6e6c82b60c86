import { useCallback, useEffect, useState } from "react";
import { api, ok, SignedOut, type Account, type Plan } from "./api";
import * as auth from "./auth";
import { config } from "./config";

const money = (p: Plan["price"]) =>
  p && p.unit_amount != null
    ? p.currency === "jpy"
      ? `¥${p.unit_amount.toLocaleString()}`
      : `${(p.unit_amount / 100).toFixed(2)} ${p.currency.toUpperCase()}`
    : "";
const day = (s?: string | null) => (s ? s.slice(0, 10) : "");

/** The thanks and cancel pages are this app at /thanks_upgrade and /canceled_upgrade. */
function Banner({ pending }: { pending: boolean }) {
  const path = window.location.pathname;
  if (path === "/thanks_upgrade" && pending)
    return <div className="banner ok" id="pending">Payment received: your key is being set up…</div>;
  if (path === "/thanks_upgrade") return <div className="banner ok" id="thanks">Thanks! Your plan is active.</div>;
  if (path === "/canceled_upgrade")
    return <div className="banner warn" id="canceled">Checkout was canceled: nothing was charged.</div>;
  return null;
}

function Plans({ plans, current, signedIn, choose }: { plans: Plan[]; current: string | null; signedIn: boolean; choose: (k: string) => void }) {
  return (
    <div id="plans" aria-label="Plans">
      {plans.map((t) => (
        <div key={t.name} id={`tier-${t.name}`} className={"tier" + (current === t.name ? " current" : "")}>
          <h3>{t.name}</h3>
          <div>{t.lookup_key ? `${money(t.price)} / month` : "Free"}</div>
          <div className="muted">
            {t.quota ? `${t.quota.limit.toLocaleString()} requests / ${t.quota.period.toLowerCase()}` : "no API key"}
          </div>
          {t.trial_days ? <div>{t.trial_days}-day free trial</div> : null}
          {t.lookup_key && signedIn && current !== t.name ? (
            <button id={`choose-${t.name}`} onClick={() => choose(t.lookup_key!)}>Choose {t.name}</button>
          ) : null}
        </div>
      ))}
    </div>
  );
}

function SignIn({ done, fail }: { done: () => void; fail: (m: string) => void }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const run = (f: typeof auth.signIn) => async () => {
    fail("");
    try {
      await f(username, password);
      done();
    } catch (e) {
      fail((e as Error).message);
    }
  };
  return (
    <section id="signin">
      <label htmlFor="username">Username</label>
      <input id="username" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} />
      <label htmlFor="password">Password</label>
      <input id="password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} />
      <button id="signin-btn" onClick={run(auth.signIn)}>Sign in</button>
      <button id="signup-btn" className="secondary" onClick={run(auth.signUp)}>Create account</button>
    </section>
  );
}

/** The original front end's upgrade screen: the plan from the ID token's custom:plan_type, an
 * upgrade button, a billing portal button. */
function UpgradeContent({ account, plans, choose, portal }: { account: Account; plans: Plan[]; choose: (k: string) => void; portal: () => void }) {
  const tokenPlan = (auth.claims()["custom:plan_type"] as string | undefined) || "FREE";
  const tier = plans.find((t) => t.name === account.plan);
  const paid = !!tier?.lookup_key;
  const first = plans.find((t) => t.lookup_key);
  return (
    <div id="upgrade-content">
      <p className="muted">
        Plan in your ID token: <b id="token-plan">{tokenPlan}</b>
        {tokenPlan !== account.plan ? " (sign in again to refresh it)" : ""}
      </p>
      {!paid && first ? <button id="upgrade" onClick={() => choose(first.lookup_key!)}>Upgrade to {first.name}</button> : null}
      {account.has_billing_account ? <button id="portal" className="secondary" onClick={portal}>Open billing portal</button> : null}
    </div>
  );
}

function KeyBox({ account, refresh, fail }: { account: Account; refresh: () => Promise<void>; fail: (m: string) => void }) {
  const [grace, setGrace] = useState("0");
  const [rotated, setRotated] = useState("");
  const u = account.usage;
  const spent = u ? Math.max(0, u.limit - u.remaining) : 0;
  const rotate = async () => {
    fail("");
    try {
      const r = ok(
        await api.POST("/api-key/rotate", {
          body: { grace_seconds: parseInt(grace || "0", 10), request_id: crypto.randomUUID() },
        }),
      );
      setRotated(`New key issued; the old one works until ${r.previous_key_until}.`);
      await refresh();
    } catch (e) {
      fail((e as Error).message);
    }
  };
  return (
    <div id="key-box">
      <p>Your API key (<span id="key-plan">{account.plan}</span>):</p>
      <p><code id="api-key">{account.api_key?.value}</code></p>
      {u ? (
        <div id="usage">
          <div className="bar"><div id="usage-fill" style={{ width: `${Math.min(100, (spent * 100) / Math.max(1, u.limit))}%` }} /></div>
          <p id="usage-text" className="muted">
            {`${spent.toLocaleString()} of ${u.limit.toLocaleString()} requests used, ${u.remaining.toLocaleString()} left this ${u.period.toLowerCase()} (${u.period_start} – ${u.period_end}, UTC)`}
            {u.billing_period_end ? `; billing period ends ${day(u.billing_period_end)}` : ""}
          </p>
        </div>
      ) : null}
      <label htmlFor="grace">Keep the old key working for (seconds)</label>
      <input id="grace" type="number" min="0" value={grace} onChange={(e) => setGrace(e.target.value)} />
      <button id="rotate" className="secondary" onClick={rotate}>Rotate key</button>
      <p id="rotated">{rotated}</p>
    </div>
  );
}

export default function App() {
  const [plans, setPlans] = useState<Plan[]>([]);
  const [account, setAccount] = useState<Account | null>(null);
  const [signedIn, setSignedIn] = useState(!!auth.idToken());
  const [error, setError] = useState("");
  const [tryResult, setTryResult] = useState("");
  const [pending, setPending] = useState(
    window.location.pathname === "/thanks_upgrade" && new URLSearchParams(window.location.search).get("status") === "pending",
  );

  const load = useCallback(async () => {
    if (!auth.idToken()) return;
    try {
      setAccount(ok(await api.GET("/account")));
    } catch (e) {
      if (e instanceof SignedOut) setSignedIn(false);
      setError((e as Error).message);
    }
  }, []);

  useEffect(() => {
    api.GET("/plans").then((r) => setPlans(r.data?.plans || []), () => setPlans([]));
  }, []);
  useEffect(() => {
    if (signedIn) load();
  }, [signedIn, load]);
  // ?status=pending: paid, the key is still being issued (the webhook finishes it): poll.
  useEffect(() => {
    if (!pending || !account) return;
    const tier = plans.find((t) => t.name === account.plan);
    if (tier?.lookup_key && account.api_key?.enabled) {
      window.history.replaceState(null, "", "/thanks_upgrade");
      setPending(false);
      return;
    }
    const t = setTimeout(load, 2000);
    return () => clearTimeout(t);
  }, [pending, account, plans, load]);

  const choose = async (lookupKey: string) => {
    setError("");
    try {
      // A checkout page, or the billing portal when switching between paid tiers.
      window.location.href = ok(await api.POST("/checkout-sessions", { body: { lookup_key: lookupKey } })).url;
    } catch (e) {
      setError((e as Error).message);
    }
  };
  const portal = async () => {
    setError("");
    try {
      window.location.href = ok(await api.GET("/create-billing-portal-by-user")).billing_portal_url;
    } catch (e) {
      setError((e as Error).message);
    }
  };
  const freeKey = async () => {
    setError("");
    try {
      ok(await api.POST("/api-key"));
      await load();
    } catch (e) {
      setError((e as Error).message);
    }
  };
  const tryKey = async () => {
    const r = await fetch(config.productUrl, { headers: { "x-api-key": account?.api_key?.value || "" } });
    const j = await r.json().catch(() => ({}));
    setTryResult(`${r.status} ${j.message}` + (j.tier ? ` (${j.tier})` : ""));
  };

  const tier = account ? plans.find((t) => t.name === account.plan) : undefined;
  const paid = !!tier?.lookup_key;
  const key = account?.api_key?.enabled ? account.api_key.value : null;
  const freeTier = plans.find((t) => !t.lookup_key);
  return (
    <main data-app="paykey-react">
      <h1>FMMail <span id="brand-plan">{account?.plan}</span></h1>
      <Banner pending={pending} />
      <Plans plans={plans} current={signedIn ? account?.plan ?? null : null} signedIn={signedIn} choose={choose} />
      {!signedIn ? (
        <SignIn done={() => { setSignedIn(true); setError(""); }} fail={setError} />
      ) : (
        <section id="account">
          <p>
            Signed in as <b id="who">{auth.userName()}</b> ·{" "}
            <a href="/" id="signout" onClick={(e) => { e.preventDefault(); auth.signOut(); setAccount(null); setSignedIn(false); window.history.replaceState(null, "", "/"); }}>sign out</a>
          </p>
          <p>
            Plan: <span className="plan" id="plan">{account ? account.plan : "…"}</span>{" "}
            <span id="sub-status">{account?.subscription_status ? `(${account.subscription_status})` : ""}</span>
          </p>
          {account?.current_period_end ? (
            <p id="period">{account.cancel_at_period_end ? `Ends on ${day(account.current_period_end)}` : `Renews on ${day(account.current_period_end)}`}</p>
          ) : null}
          {account?.trial_end && account.subscription_status === "trialing" ? <p id="trial">Trial ends on {day(account.trial_end)}</p> : null}
          {account && key ? <KeyBox account={account} refresh={load} fail={setError} /> : null}
          {account && !key && !paid && freeTier?.has_api_key ? (
            <button id="free-key" className="secondary" onClick={freeKey}>Get a free API key</button>
          ) : null}
          {account ? <UpgradeContent account={account} plans={plans} choose={choose} portal={portal} /> : null}
          {account?.api_key ? <button id="try" className="secondary" onClick={tryKey}>Call the API</button> : null}
          <p id="try-result">{tryResult}</p>
        </section>
      )}
      <p id="error" className="err" role="alert">{error}</p>
    </main>
  );
}
