import { useCallback, useEffect, useRef, useState } from "react";
import { api, ok, SignedOut, type Account, type Plan } from "./api";
import * as auth from "./auth";
import { config } from "./config";
import { amount, every, money, overageCost, perCall } from "./format";

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
          <div className="price">{t.lookup_key ? `${money(t.price, config.locale)} ${every(t.price)}`.trim() : "Free"}</div>
          {t.metered ? (
            <div className="metered" id={`metered-${t.name}`}>
              {perCall(t.metered, config.locale)
                ? `${t.metered.included.toLocaleString()} requests included, then ${perCall(t.metered, config.locale)} per request`
                : "usage-based (the per-request price is not available)"}
            </div>
          ) : null}
          <div className="muted">
            {t.quota
              ? `${t.metered ? "up to " : ""}${t.quota.limit.toLocaleString()} requests / ${t.quota.period.toLowerCase()}`
              : t.has_api_key ? "API key, no quota" : "no API key"}
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

type Step = "credentials" | "confirm" | "forgot";

/** Sign in or create an account (username, email, password); then, on a deployed user pool,
 * the emailed confirmation code; or a password reset by an emailed code. */
function SignIn({ done, fail }: { done: () => void; fail: (m: string) => void }) {
  const [username, setUsername] = useState("");
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [code, setCode] = useState("");
  const [step, setStep] = useState<Step>("credentials");
  const [info, setInfo] = useState("");
  const run = (f: () => Promise<void>) => async () => {
    fail("");
    try {
      await f();
    } catch (e) {
      if (e instanceof auth.NeedsConfirmation) {
        setInfo(e.message);
        setStep("confirm");
      } else fail((e as Error).message);
    }
  };
  const signIn = async () => {
    await auth.signIn(username, password);
    done();
  };
  const signUp = async () => {
    await auth.signUp(username, email, password);
    await signIn();
  };
  const confirm = async () => {
    await auth.confirmSignUp(username, code);
    setCode("");
    if (password) await signIn();
    else {
      setStep("credentials");
      setInfo("Confirmed: sign in.");
    }
  };
  const resend = async () => {
    const to = await auth.resendCode(username);
    setInfo(to ? `We sent a new code to ${to}.` : "We sent a new code.");
  };
  const forgot = async () => {
    const to = await auth.forgotPassword(username);
    setInfo(to ? `We sent a code to ${to}: enter it with a new password.` : "Enter the code we sent you with a new password.");
    setPassword("");
    setStep("forgot");
  };
  const reset = async () => {
    await auth.resetPassword(username, code, password);
    setCode("");
    await signIn();
  };
  const field = (id: string, label: string, value: string, set: (v: string) => void, type = "text", auto = "") => (
    <>
      <label htmlFor={id}>{label}</label>
      <input id={id} type={type} autoComplete={auto} value={value} onChange={(e) => set(e.target.value)} />
    </>
  );
  return (
    <section id="signin" data-step={step}>
      <p id="auth-info" className="muted">{info}</p>
      {field("username", "Username", username, setUsername, "text", "username")}
      {step === "credentials" ? (
        <>
          {field("email", "Email (to create an account)", email, setEmail, "email", "email")}
          {field("password", "Password", password, setPassword, "password", "current-password")}
          <button id="signin-btn" onClick={run(signIn)}>Sign in</button>
          <button id="signup-btn" className="secondary" onClick={run(signUp)}>Create account</button>
          {auth.canResetPassword() ? (
            <button id="forgot-btn" className="secondary" onClick={run(forgot)}>Forgot password?</button>
          ) : null}
        </>
      ) : step === "confirm" ? (
        <>
          {field("code", "Confirmation code", code, setCode, "text", "one-time-code")}
          <button id="confirm-btn" onClick={run(confirm)}>Confirm</button>
          <button id="resend-btn" className="secondary" onClick={run(resend)}>Send a new code</button>
        </>
      ) : (
        <>
          {field("code", "Code", code, setCode, "text", "one-time-code")}
          {field("password", "New password", password, setPassword, "password", "new-password")}
          <button id="reset-btn" onClick={run(reset)}>Set the new password</button>
          <button id="back-btn" className="secondary" onClick={() => { setStep("credentials"); setInfo(""); }}>Back</button>
        </>
      )}
    </section>
  );
}

/** The original front end's upgrade screen: the plan from the ID token's custom:plan_type, an
 * upgrade button, a billing portal button. */
function UpgradeContent({ account, plans, choose, portal }: { account: Account; plans: Plan[]; choose: (k: string) => void; portal: () => void }) {
  const tokenPlan = tokenPlanOf(plans);
  const tier = plans.find((t) => t.name === account.plan);
  const paid = !!tier?.lookup_key;
  const first = plans.find((t) => t.lookup_key);
  return (
    <div id="upgrade-content">
      <p className="muted">
        Plan in your ID token: <b id="token-plan">{tokenPlan}</b>
        {tokenPlan !== account.plan ? " (refreshing…)" : ""}
      </p>
      {!paid && first ? <button id="upgrade" onClick={() => choose(first.lookup_key!)}>Upgrade to {first.name}</button> : null}
      {account.has_billing_account ? <button id="portal" className="secondary" onClick={portal}>Open billing portal</button> : null}
    </div>
  );
}

/** What each usage threshold tells the user (`/account`'s `usage.alerts`). */
const ALERT_TEXT: Record<string, string> = {
  included_80: "80 % of your included requests used",
  included_100: "all included requests used: further requests are billed at the metered rate",
  limit_80: "80 % of this key's monthly limit used",
  limit_100: "this key's monthly limit reached: it is refused until the next month",
};

type Usage = NonNullable<Account["usage"]>;

/** Days from `a` to `b`, both included (YYYY-MM-DD, UTC). */
const daysFrom = (a: string, b: string) => Math.round((Date.parse(b) - Date.parse(a)) / 86_400_000) + 1;

/** The quota period's use, day by day: each bar is the calls so far (beyond the included amount
 * in a darker colour); the rest of the period is projected at the average daily rate so far,
 * stopping at the cap (where calls stop); lines mark the included amount and the cap. */
function UsageChart({ u, metered }: { u: Usage; metered: Plan["metered"] }) {
  const days = Math.max(1, daysFrom(u.period_start, u.period_end));
  let sum = 0;
  const soFar = u.daily.map((d) => (sum += d.used));
  const elapsed = soFar.length;
  const perDay = elapsed ? u.used / elapsed : 0;
  // calls stop at the cap; a cap lowered below the use so far serves nothing more
  const projected = Math.max(u.used, Math.min(u.limit, Math.round(u.used + perDay * (days - elapsed))));
  const included = u.included ?? 0;
  const [W, H, left, bottom] = [640, 200, 44, 18];
  const top = Math.max(u.limit, projected, soFar[elapsed - 1] ?? 0, 1) * 1.1;
  const y = (v: number) => H - bottom - (v / top) * (H - bottom - 8);
  const bw = (W - left) / days;
  const bar = (i: number, from: number, to: number, cls: string) =>
    to > from ? <rect key={`${cls}-${i}`} className={cls} x={left + i * bw + 1} width={Math.max(1, bw - 2)} y={y(to)} height={y(from) - y(to)} /> : null;
  const bars = [];
  for (let i = 0; i < days; i++) {
    if (i < elapsed) {
      const v = soFar[i];
      bars.push(bar(i, 0, Math.min(v, included), "used"), bar(i, included, v, "over"));
    } else {
      const v = Math.max(u.used, Math.min(u.limit, Math.round(u.used + perDay * (i + 1 - elapsed))));
      bars.push(bar(i, 0, v, "projected"));
    }
  }
  const cost = overageCost(metered, projected);
  const line = (v: number, cls: string, label: string) => (
    <g className={cls}>
      <line x1={left} x2={W} y1={y(v)} y2={y(v)} />
      <text x={left + 4} y={y(v) - 4}>{label}</text>
    </g>
  );
  return (
    <figure id="usage-chart">
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`Requests so far this ${u.period.toLowerCase()}, by day, and the projection`}>
        <text x={0} y={y(0)}>0</text>
        <text x={0} y={y(u.limit) + 4}>{u.limit.toLocaleString()}</text>
        {bars}
        {u.included != null ? line(included, "included", `included ${included.toLocaleString()}`) : null}
        {line(u.limit, "cap", `${u.spend_cap ? "spend cap" : "limit"} ${u.limit.toLocaleString()}`)}
        <text x={left} y={H - 2}>{u.period_start}</text>
        <text x={W} y={H - 2} textAnchor="end">{u.period_end}</text>
      </svg>
      <figcaption id="usage-projection" className="muted">
        {`At ${Math.round(perDay).toLocaleString()} requests a day so far, about ${projected.toLocaleString()} by ${u.period_end}`}
        {u.included != null ? `, ${Math.max(0, projected - included).toLocaleString()} beyond the included ${included.toLocaleString()}` : ""}
        {cost != null && metered?.currency ? `: about ${amount(cost, metered.currency, config.locale)} of usage` : ""}
        {u.included != null ? " (an estimate over this calendar month: Stripe bills your billing period's total at its end)" : ""}
      </figcaption>
    </figure>
  );
}

/** A metered tier's spend cap: where the key's requests stop each month, from the included
 * amount to the plan's quota (`PUT /api-key/cap`). */
function SpendCap({ u, metered, refresh, fail }: { u: Usage; metered: Plan["metered"]; refresh: () => Promise<void>; fail: (m: string) => void }) {
  const cap = u.spend_cap!;
  const [value, setValue] = useState(String(cap.requests));
  const [saved, setSaved] = useState("");
  const put = async (requests: number | null) => {
    fail("");
    if (requests !== null && !Number.isInteger(requests)) return fail("Enter a whole number of requests.");
    try {
      const r = ok(await api.PUT("/api-key/cap", { body: { requests } }));
      setValue(String(r.spend_cap.requests));
      setSaved(`Spend cap set to ${r.spend_cap.requests.toLocaleString()} requests a month; ${r.remaining.toLocaleString()} left this month.`);
      await refresh();
    } catch (e) {
      fail((e as Error).message);
    }
  };
  const most = overageCost(metered, cap.requests);
  return (
    <div id="spend-cap">
      <p id="cap-text" className="muted">
        {`Spend cap: ${cap.requests.toLocaleString()} requests a month (${cap.custom ? "set by you" : "the plan's default"}; you may set ${cap.min.toLocaleString()} to ${cap.max.toLocaleString()})`}
        {most != null && metered?.currency ? `: up to ${amount(most, metered.currency, config.locale)} of usage beyond the included requests in a calendar month (a billing period spanning two months can carry more)` : ""}
      </p>
      <label htmlFor="cap">Stop my requests each month at</label>
      <input id="cap" type="number" min={cap.min} max={cap.max} step="1" value={value} onChange={(e) => setValue(e.target.value)} />
      <button id="set-cap" className="secondary" onClick={() => put(Number(value))}>Set spend cap</button>
      {cap.custom ? <button id="default-cap" className="secondary" onClick={() => put(null)}>Use the plan's default</button> : null}
      <p id="cap-saved">{saved}</p>
    </div>
  );
}

function KeyBox({ account, plans, refresh, fail }: { account: Account; plans: Plan[]; refresh: () => Promise<void>; fail: (m: string) => void }) {
  const metered = plans.find((t) => t.name === account.plan)?.metered ?? null;
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
          {u.included != null ? (
            <p id="usage-included" className="muted">
              {`${u.included.toLocaleString()} requests included each billing period; this key has used ${Math.max(0, spent - u.included).toLocaleString()} beyond that this calendar month (an estimate: Stripe bills the billing period's total at its end); requests stop at ${u.limit.toLocaleString()} a month (your spend cap)`}
            </p>
          ) : null}
          {u.daily.length ? <UsageChart u={u} metered={metered} /> : null}
          {u.spend_cap ? <SpendCap key={account.plan} u={u} metered={metered} refresh={refresh} fail={fail} /> : null}
          {u.alerts.length ? (
            <p id="usage-alerts" className="banner warn">
              {u.alerts.map((a) => ALERT_TEXT[a] ?? a).join(" · ")}
            </p>
          ) : null}
        </div>
      ) : null}
      <label htmlFor="grace">Keep the old key working for (seconds)</label>
      <input id="grace" type="number" min="0" value={grace} onChange={(e) => setGrace(e.target.value)} />
      <button id="rotate" className="secondary" onClick={rotate}>Rotate key</button>
      <p id="rotated">{rotated}</p>
    </div>
  );
}

/** The plan in the ID token (`custom:plan_type`; none yet: the free tier's name). */
function tokenPlanOf(plans: Plan[]): string {
  return (auth.claims()["custom:plan_type"] as string | undefined) || plans.find((t) => !t.lookup_key)?.name || "FREE";
}

export default function App() {
  const [plans, setPlans] = useState<Plan[]>([]);
  const [account, setAccount] = useState<Account | null>(null);
  const [signedIn, setSignedIn] = useState(!!auth.idToken());
  const [error, setError] = useState("");
  const [tryResult, setTryResult] = useState("");
  const [tokenVersion, setTokenVersion] = useState(0);
  const [pending, setPending] = useState(
    window.location.pathname === "/thanks_upgrade" && new URLSearchParams(window.location.search).get("status") === "pending",
  );

  const load = useCallback(async () => {
    if (!auth.idToken()) return;
    try {
      setAccount(ok(await api.GET("/account")));
    } catch (e) {
      if (e instanceof SignedOut || !auth.idToken()) setSignedIn(false);
      setError((e as Error).message);
    }
  }, []);

  // The ID token's custom:plan_type follows the plan: when paykey reports another plan than
  // the token says (an upgrade, a plan switch, a cancellation), the token is refreshed: at once,
  // then (the user pool may be written a moment after the account) twice more 5 seconds apart.
  const refreshes = useRef({ plan: "", n: 0, at: 0 });
  useEffect(() => {
    if (!account || !plans.length || account.plan === tokenPlanOf(plans)) return;
    const r = refreshes.current;
    if (r.plan !== account.plan) Object.assign(r, { plan: account.plan, n: 0, at: 0 });
    if (r.n >= 3) return;
    const wait = Math.max(0, r.at + 5000 - Date.now());
    const t = setTimeout(() => {
      Object.assign(r, { n: r.n + 1, at: Date.now() });
      auth.refresh().then(
        () => setTokenVersion((v) => v + 1),
        (e) => {
          if (!auth.idToken()) setSignedIn(false);
          setError((e as Error).message);
        },
      );
    }, wait);
    return () => clearTimeout(t);
  }, [account, plans, tokenVersion]);

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
      <h1><span id="product-name">{config.productName}</span> <span id="brand-plan">{account?.plan}</span></h1>
      <Banner pending={pending} />
      <Plans plans={plans} current={signedIn ? account?.plan ?? null : null} signedIn={signedIn} choose={choose} />
      {!signedIn ? (
        <SignIn done={() => { setSignedIn(true); setError(""); }} fail={setError} />
      ) : (
        <section id="account">
          <p>
            Signed in as <b id="who">{auth.userName()}</b> ·{" "}
            <a href="/" id="signout" onClick={(e) => { e.preventDefault(); auth.signOut(); refreshes.current = { plan: "", n: 0, at: 0 }; setAccount(null); setSignedIn(false); window.history.replaceState(null, "", "/"); }}>sign out</a>
          </p>
          <p>
            Plan: <span className="plan" id="plan">{account ? account.plan : "…"}</span>{" "}
            <span id="sub-status">{account?.subscription_status ? `(${account.subscription_status})` : ""}</span>
          </p>
          {account?.current_period_end ? (
            <p id="period">{account.cancel_at_period_end ? `Ends on ${day(account.current_period_end)}` : `Renews on ${day(account.current_period_end)}`}</p>
          ) : null}
          {account?.trial_end && account.subscription_status === "trialing" ? <p id="trial">Trial ends on {day(account.trial_end)}</p> : null}
          {account && key ? <KeyBox account={account} plans={plans} refresh={load} fail={setError} /> : null}
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
