// Where the front end finds paykey and what it sells. Two layers, the later winning:
//   1. build time (Vite's VITE_* variables):
//        VITE_API_URL              the stack's API (template output ApiUrl); default "/api" (the local stack)
//        VITE_USER_POOL_ID         the stack's Cognito user pool; unset: the local stack's Cognito
//        VITE_USER_POOL_CLIENT_ID  its app client
//        VITE_PRODUCT_NAME         the name in the header and the page title
//        VITE_PRODUCT_URL          the API being sold, for the "Call the API" button
//        VITE_LOCALE               how prices and dates are written (BCP 47); default the browser's
//   2. run time: /config.json beside index.html, the same names in camelCase (apiUrl, userPoolId,
//      userPoolClientId, productName, productUrl, locale): one build serves dev and prod, each
//      with its own config.json (the local stack serves one; see README, "Host the front end").
// Prices, currencies and billing intervals are not configured here: they come from GET /plans
// (Stripe's prices).
export interface Config {
  apiUrl: string;
  userPoolId?: string;
  userPoolClientId?: string;
  productName: string;
  productUrl: string;
  locale?: string;
  /** Set by the local stack's config.json: no user pool, its own Cognito emulation. */
  localCognito?: boolean;
}

const env = import.meta.env;
export const config: Config = {
  apiUrl: (env.VITE_API_URL as string | undefined) || "/api",
  userPoolId: (env.VITE_USER_POOL_ID as string | undefined) || undefined,
  userPoolClientId: (env.VITE_USER_POOL_CLIENT_ID as string | undefined) || undefined,
  productName: (env.VITE_PRODUCT_NAME as string | undefined) || "API",
  productUrl: (env.VITE_PRODUCT_URL as string | undefined) || "/product/hello",
  locale: (env.VITE_LOCALE as string | undefined) || undefined,
};

const KEYS: (keyof Config & string)[] = ["apiUrl", "userPoolId", "userPoolClientId", "productName", "productUrl", "locale"];

/** Reads /config.json when there is one (a host that answers every path with index.html, as
 * an SPA rewrite does, gives HTML: ignored). Call once, before the first render. */
export async function loadConfig(): Promise<void> {
  try {
    const r = await fetch("/config.json", { cache: "no-store" });
    if (!r.ok) return;
    const j = (await r.json()) as Partial<Record<keyof Config, unknown>>;
    if (typeof j !== "object" || j === null) return;
    if (j.localCognito === true) config.localCognito = true;
    for (const k of KEYS) {
      const v = j[k];
      if (typeof v === "string" && v !== "") (config as unknown as Record<string, string>)[k] = v;
    }
  } catch {
    // no config.json: the build's values
  }
  config.apiUrl = config.apiUrl.replace(/\/$/, "");
}

/** No user pool configured: the local stack's Cognito (/cognito/…). */
export const localCognito = (): boolean => !config.userPoolId;

/** A production build with no user pool, not served by the local stack (whose config.json says
 * so): a missing or unreadable config.json. The app says so instead of sending passwords to
 * /cognito/… on a static host. */
export const misconfigured = (): boolean => import.meta.env.PROD && !config.userPoolId && !config.localCognito;
