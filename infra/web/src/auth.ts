// Sign-up, sign-in and tokens. Two back ends:
// - a deployed stack: its Cognito user pool through amazon-cognito-identity-js (loaded only
//   then): sign-up with an email, the emailed confirmation code (and a resend), SRP sign-in
//   (the only password flow the template's app client allows), the refresh token, a forgotten
//   password reset by an emailed code;
// - the local stack: its Cognito emulation (/cognito/sign-up, /cognito/sign-in,
//   /cognito/refresh), which sends no email: users are confirmed at once and there is no
//   password reset.
// The ID token goes to paykey's API (API Gateway's Cognito authorizer reads it); it lives an
// hour, so it is refreshed with the refresh token before it runs out and whenever the plan
// paykey reports differs from the token's custom:plan_type (after an upgrade, a plan switch, a
// cancellation).
import type { CognitoUserPool as Pool, CognitoUserSession, ISignUpResult } from "amazon-cognito-identity-js";
import { config, localCognito } from "./config";

const TOKEN = "paykey.idToken";
const REFRESH = "paykey.refreshToken";
const USER = "paykey.user";
/** When the ID token runs out by this browser's clock (its lifetime, exp − iat, from when it
 * was received: a wrong clock does not make every call refresh). */
const EXPIRES = "paykey.idTokenExpiresAt";

export const idToken = (): string | null => localStorage.getItem(TOKEN);
export const userName = (): string => localStorage.getItem(USER) || "";
/** Bumped by every sign-in and sign-out: a refresh that finishes after one writes nothing. */
let epoch = 0;
export function signOut() {
  epoch++;
  for (const k of [TOKEN, REFRESH, USER, EXPIRES]) localStorage.removeItem(k);
}

/** The user pool wants the emailed code first (sign-up, or sign-in of an unconfirmed user). */
export class NeedsConfirmation extends Error {
  constructor(public destination: string | null) {
    super(destination ? `We sent a confirmation code to ${destination}.` : "Enter the confirmation code we sent you.");
  }
}

/** A token's claims (display and expiry only: API Gateway's authorizer is what verifies it). */
function decode(t: string | null): Record<string, unknown> {
  if (!t) return {};
  try {
    const part = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(decodeURIComponent(escape(atob(part))));
  } catch {
    return {};
  }
}
export const claims = (): Record<string, unknown> => decode(idToken());

function keep(id: string, refresh: string | null, username: string) {
  const c = decode(id);
  const lifetime = Number(c.exp || 0) - Number(c.iat || 0);
  localStorage.setItem(EXPIRES, String(Date.now() + Math.max(0, lifetime) * 1000));
  localStorage.setItem(TOKEN, id);
  if (refresh) localStorage.setItem(REFRESH, refresh);
  localStorage.setItem(USER, username);
}

// ---------------------------------------------------------------- the local stack
async function local(action: string, body: Record<string, string>) {
  const r = await fetch(`/cognito/${action}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const j = await r.json();
  if (!r.ok) throw Object.assign(new Error(j.message || r.statusText), { code: j.__type });
  return j;
}

// ---------------------------------------------------------------- the user pool
// Tokens are kept under paykey's own keys (above), not in the library's cache.
const noStorage = { getItem: () => null, setItem: () => {}, removeItem: () => {}, clear: () => {} };
let poolPromise: Promise<Pool> | null = null;
function pool(): Promise<Pool> {
  poolPromise ??= import("amazon-cognito-identity-js").then(
    ({ CognitoUserPool }) =>
      new CognitoUserPool({ UserPoolId: config.userPoolId!, ClientId: config.userPoolClientId!, Storage: noStorage }),
  );
  return poolPromise;
}
async function cognitoUser(username: string) {
  const { CognitoUser } = await import("amazon-cognito-identity-js");
  return new CognitoUser({ Username: username, Pool: await pool(), Storage: noStorage });
}
type CognitoErr = { code?: string; name?: string; message?: string };
const message = (e: unknown) => (e as CognitoErr)?.message || String(e);
const code = (e: unknown) => (e as CognitoErr)?.code || (e as CognitoErr)?.name || "";
const where = (d: { Destination?: string } | undefined | null) => d?.Destination ?? null;

export async function signIn(username: string, password: string): Promise<void> {
  epoch++;
  if (localCognito()) {
    const r = (await local("sign-in", { username, password })).AuthenticationResult;
    keep(r.IdToken, r.RefreshToken ?? null, username);
    return;
  }
  const { AuthenticationDetails } = await import("amazon-cognito-identity-js");
  const user = await cognitoUser(username);
  const session = await new Promise<CognitoUserSession>((resolve, reject) =>
    user.authenticateUser(new AuthenticationDetails({ Username: username, Password: password }), {
      onSuccess: resolve,
      onFailure: (e) => reject(code(e) === "UserNotConfirmedException" ? new NeedsConfirmation(null) : new Error(message(e))),
      newPasswordRequired: () =>
        reject(new Error("This account needs a new password: use “Forgot password?” to set one.")),
    }),
  );
  keep(session.getIdToken().getJwtToken(), session.getRefreshToken().getToken(), username);
}

/** Creates the account; throws NeedsConfirmation when the pool emails a code first. */
export async function signUp(username: string, email: string, password: string): Promise<void> {
  if (localCognito()) {
    await local("sign-up", { username, password, email });
    return;
  }
  const { CognitoUserAttribute } = await import("amazon-cognito-identity-js");
  const p = await pool();
  const r = await new Promise<ISignUpResult>((resolve, reject) =>
    p.signUp(username, password, [new CognitoUserAttribute({ Name: "email", Value: email })], [], (e, res) =>
      e || !res ? reject(new Error(message(e))) : resolve(res),
    ),
  );
  if (!r.userConfirmed) throw new NeedsConfirmation(where(r.codeDeliveryDetails as { Destination?: string }));
}

export async function confirmSignUp(username: string, confirmation: string): Promise<void> {
  const user = await cognitoUser(username);
  await new Promise<void>((resolve, reject) =>
    user.confirmRegistration(confirmation, false, (e) => (e ? reject(new Error(message(e))) : resolve())),
  );
}

/** Sends the confirmation code again; where it went. */
export async function resendCode(username: string): Promise<string | null> {
  const user = await cognitoUser(username);
  return new Promise((resolve, reject) =>
    user.resendConfirmationCode((e, r) =>
      e ? reject(new Error(message(e))) : resolve(where((r as { CodeDeliveryDetails?: { Destination?: string } })?.CodeDeliveryDetails)),
    ),
  );
}

/** Emails a code to reset the password; where it went. */
export async function forgotPassword(username: string): Promise<string | null> {
  const user = await cognitoUser(username);
  return new Promise((resolve, reject) =>
    user.forgotPassword({
      onSuccess: (d) => resolve(where((d as { CodeDeliveryDetails?: { Destination?: string } })?.CodeDeliveryDetails)),
      onFailure: (e) => reject(new Error(message(e))),
      inputVerificationCode: (d) =>
        resolve(where((d as { CodeDeliveryDetails?: { Destination?: string } })?.CodeDeliveryDetails)),
    }),
  );
}

export async function resetPassword(username: string, confirmation: string, password: string): Promise<void> {
  const user = await cognitoUser(username);
  await new Promise<void>((resolve, reject) =>
    user.confirmPassword(confirmation, password, { onSuccess: () => resolve(), onFailure: (e) => reject(new Error(message(e))) }),
  );
}

export const canResetPassword = (): boolean => !localCognito();

/** A new ID token from the refresh token (its claims as the pool has them now); one refresh
 * at a time. Signed out when the pool refuses the refresh token (expired, revoked, user
 * deleted: NotAuthorizedException); a network error or throttling keeps the session. */
let inflight: Promise<void> | null = null;
export function refresh(): Promise<void> {
  inflight ??= refreshOnce().finally(() => (inflight = null));
  return inflight;
}

async function refreshOnce(): Promise<void> {
  const rt = localStorage.getItem(REFRESH);
  const username = userName();
  if (!rt || !username) {
    signOut();
    throw new Error("Please sign in again.");
  }
  const started = epoch;
  let id: string;
  let rotated: string | null = null;
  try {
    if (localCognito()) {
      id = (await local("refresh", { refresh_token: rt })).AuthenticationResult.IdToken;
    } else {
      const { CognitoRefreshToken } = await import("amazon-cognito-identity-js");
      const user = await cognitoUser(username);
      const s = await new Promise<CognitoUserSession>((resolve, reject) =>
        user.refreshSession(new CognitoRefreshToken({ RefreshToken: rt }), (e, session) =>
          e ? reject(e) : resolve(session),
        ),
      );
      id = s.getIdToken().getJwtToken();
      rotated = s.getRefreshToken().getToken() || null;
    }
  } catch (e) {
    if (code(e) === "NotAuthorizedException" && started === epoch) signOut();
    throw new Error(message(e));
  }
  // signed out (or in as someone else) meanwhile: this token is no longer wanted
  if (started !== epoch) return;
  keep(id, rotated, username);
}

/** The ID token, refreshed first when it runs out within a minute. */
export async function freshToken(): Promise<string | null> {
  const expiresAt = Number(localStorage.getItem(EXPIRES) || 0);
  if (idToken() && expiresAt - Date.now() < 60_000) await refresh().catch(() => {});
  return idToken();
}
