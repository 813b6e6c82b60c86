// Sign-in. Against the local stack: its Cognito emulation (/cognito/sign-up, /cognito/sign-in).
// Against a deployed stack: the user pool itself with SRP (amazon-cognito-identity-js, loaded
// only then), the only password flow the stack's app client allows.
import { config, localCognito } from "./config";

const TOKEN = "paykey.idToken";
const USER = "paykey.user";

export const idToken = (): string | null => localStorage.getItem(TOKEN);
export const userName = (): string => localStorage.getItem(USER) || "";
export function signOut() {
  localStorage.removeItem(TOKEN);
  localStorage.removeItem(USER);
}

/** The ID token's claims (display only: API Gateway's authorizer is what verifies it). */
export function claims(): Record<string, unknown> {
  const t = idToken();
  if (!t) return {};
  try {
    const part = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(decodeURIComponent(escape(atob(part))));
  } catch {
    return {};
  }
}

async function local(action: "sign-up" | "sign-in", username: string, password: string) {
  const r = await fetch(`/cognito/${action}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  const j = await r.json();
  if (!r.ok) throw new Error(j.message || r.statusText);
  return j;
}

async function pool() {
  const { CognitoUserPool } = await import("amazon-cognito-identity-js");
  return new CognitoUserPool({ UserPoolId: config.userPoolId!, ClientId: config.clientId! });
}

export async function signIn(username: string, password: string): Promise<void> {
  let token: string;
  if (localCognito) {
    token = (await local("sign-in", username, password)).AuthenticationResult.IdToken;
  } else {
    const { AuthenticationDetails, CognitoUser } = await import("amazon-cognito-identity-js");
    const user = new CognitoUser({ Username: username, Pool: await pool() });
    token = await new Promise<string>((resolve, reject) =>
      user.authenticateUser(new AuthenticationDetails({ Username: username, Password: password }), {
        onSuccess: (s) => resolve(s.getIdToken().getJwtToken()),
        onFailure: (e) => reject(new Error(e.message || String(e))),
      }),
    );
  }
  localStorage.setItem(TOKEN, token);
  localStorage.setItem(USER, username);
}

export async function signUp(username: string, password: string): Promise<void> {
  if (localCognito) {
    await local("sign-up", username, password);
  } else {
    const p = await pool();
    await new Promise<void>((resolve, reject) =>
      p.signUp(username, password, [], [], (e) => (e ? reject(new Error(e.message)) : resolve())),
    );
  }
  await signIn(username, password);
}
