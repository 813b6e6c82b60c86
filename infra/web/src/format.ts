// Prices as Stripe gives them (GET /plans): an amount in the currency's minor unit and a
// recurring interval, written for the reader's locale.
import type { Plan } from "./api";

// Stripe's zero- and three-decimal currencies (docs.stripe.com/currencies, "Minor units in API
// amounts"); every other currency has two decimals in the API (ISK, HUF and TWD included).
const ZERO_DECIMAL = new Set("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split(" "));
const THREE_DECIMAL = new Set("bhd jod kwd omr tnd".split(" "));

export function money(p: Plan["price"], locale?: string): string {
  if (!p || p.unit_amount == null) return "";
  return amount(p.unit_amount, p.currency, locale);
}

/** An amount in the currency's minor unit (Stripe's), written for the reader's locale. */
export function amount(minor: number, currency: string, locale?: string): string {
  const c = currency.toLowerCase();
  const exponent = ZERO_DECIMAL.has(c) ? 0 : THREE_DECIMAL.has(c) ? 3 : 2;
  const major = minor / 10 ** exponent;
  try {
    return new Intl.NumberFormat(locale, { style: "currency", currency: c.toUpperCase() }).format(major);
  } catch {
    return `${major} ${c.toUpperCase()}`;
  }
}

/** What `calls` beyond a metered tier's included ones cost at its per-call rate, in the minor
 * unit (graduated: the included ones are free); `null` without a rate. */
export function overageCost(m: Plan["metered"], calls: number): number | null {
  if (!m || m.unit_amount_decimal == null) return null;
  return Math.max(0, calls - m.included) * Number(m.unit_amount_decimal);
}

/** "/ month", "/ 3 months", "/ year"; "" for a price that does not recur. */
export function every(p: Plan["price"]): string {
  if (!p?.interval) return "";
  const n = p.interval_count ?? 1;
  return n === 1 ? `/ ${p.interval}` : `/ ${n} ${p.interval}s`;
}

/** The price of one call beyond a metered tier's included ones ("¥0.5"), from Stripe's
 * `unit_amount_decimal` (a decimal string in the currency's minor unit). */
export function perCall(m: Plan["metered"], locale?: string): string {
  if (!m || m.unit_amount_decimal == null || !m.currency) return "";
  const c = m.currency.toLowerCase();
  const exponent = ZERO_DECIMAL.has(c) ? 0 : THREE_DECIMAL.has(c) ? 3 : 2;
  const amount = Number(m.unit_amount_decimal) / 10 ** exponent;
  try {
    return new Intl.NumberFormat(locale, { style: "currency", currency: c.toUpperCase(), maximumFractionDigits: 8 }).format(amount);
  } catch {
    return `${amount} ${c.toUpperCase()}`;
  }
}
