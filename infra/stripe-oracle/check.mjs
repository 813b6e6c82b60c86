#!/usr/bin/env node
// Stripe's own definitions as the oracle for the Stripe emulator (infra/stripe-emulator).
//
// The emulator appends every API request it serves, with its answer, to JSONL capture files
// (STRIPE_EMULATOR_CAPTURE, one file per process). Each line:
//   {"method":"POST","path":"/v1/checkout/sessions","params":{...},"status":200,"response":{...}}
// This script type-checks every captured request and answer against the TypeScript
// declarations of stripe-node (pinned in package.json to the release whose API version is the
// emulator's), by generating one typed constant per distinct shape and compiling them with
// the TypeScript compiler (--strict --noEmit):
//   request params   `const r1: Stripe.Checkout.SessionCreateParams = {...}`   (exact: an unknown
//                    parameter, a wrong type or a missing required parameter fails; unknown and
//                    missing keys are also found by this script along the same types, since the
//                    compiler reports them only when nothing else in the literal fails)
//   2xx answers      `const a2: DeepPartial<Stripe.Checkout.Session> = {...}`  (every field
//                    optional, but an unknown field or a wrong type fails)
//   error answers    `const e3: { error: Stripe.StripeRawError } = {...}`, plus `type` and
//                    `message` present as strings
// and then reports, per Stripe object type, how many of the fields stripe-node declares the
// emulator returned (read from the compiler, not from a list kept here).
//
// Form values are all strings (`a[b][0][c]=x`), so request leaves are coerced before the check.
// COERCION RULE (type-directed, like Stripe's own decoding of a form body): a string leaf is
// kept a string where the declared type at that place accepts it (`string`, an open enum's
// `OtherString`, or a string literal equal to the value, e.g. `''` of `Emptyable<T>`);
// otherwise "true"/"false" becomes a boolean where the declared type accepts a boolean, a
// decimal number (/^-?\d+(\.\d+)?$/) a number where it accepts a number, a decimal string a
// `Stripe.Decimal` where it accepts one; anything else stays a string (and fails the check).
// So a metadata value "42" stays "42" (MetadataParam accepts string | number | null) and a
// numeric `client_reference_id` stays a string. Where no type is declared (an unknown
// parameter, which fails anyway) the plain rule applies: "true"/"false" -> boolean,
// /^-?\d+$/ -> number. What form encoding cannot show: a number sent where a string is expected
// (Stripe reads it as that string, and so does this check).
//
// Open enums: stripe-node types most enums as `'a' | 'b' | OtherString` (any string), so the
// compiler alone would accept a misspelt value. This script also checks every string at such a
// place, in requests and answers, against the values the pinned stripe-node lists, and fails
// on another one (`--allow-unknown-enum-values` turns that into a warning).
//
// Usage: node check.mjs [--allow-unknown-enum-values] CAPTURE.jsonl|DIR ...
//        node check.mjs --self-test
// Exit status: 0 all checks passed, 1 a check failed, 2 usage or setup error.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

/** Every route the emulator serves (infra/stripe-emulator/src/state.rs, `Emu::route`):
 * method, path pattern, stripe-node params type, type of its 2xx answer. */
const ROUTES = [
  ['POST', '/v1/products', 'Stripe.ProductCreateParams', 'Stripe.Product'],
  ['GET', '/v1/products', 'Stripe.ProductListParams', 'Stripe.ApiList<Stripe.Product>'],
  ['GET', '/v1/products/{id}', 'Stripe.ProductRetrieveParams', 'Stripe.Product'],
  ['POST', '/v1/products/{id}', 'Stripe.ProductUpdateParams', 'Stripe.Product'],
  ['POST', '/v1/prices', 'Stripe.PriceCreateParams', 'Stripe.Price'],
  ['GET', '/v1/prices', 'Stripe.PriceListParams', 'Stripe.ApiList<Stripe.Price>'],
  ['GET', '/v1/prices/{id}', 'Stripe.PriceRetrieveParams', 'Stripe.Price'],
  ['POST', '/v1/prices/{id}', 'Stripe.PriceUpdateParams', 'Stripe.Price'],
  ['POST', '/v1/customers', 'Stripe.CustomerCreateParams', 'Stripe.Customer'],
  ['GET', '/v1/customers/{id}', 'Stripe.CustomerRetrieveParams', 'Stripe.Customer | Stripe.DeletedCustomer'],
  ['DELETE', '/v1/customers/{id}', 'Stripe.CustomerDeleteParams', 'Stripe.DeletedCustomer'],
  ['POST', '/v1/checkout/sessions', 'Stripe.Checkout.SessionCreateParams', 'Stripe.Checkout.Session'],
  ['GET', '/v1/checkout/sessions', 'Stripe.Checkout.SessionListParams', 'Stripe.ApiList<Stripe.Checkout.Session>'],
  ['GET', '/v1/checkout/sessions/{id}', 'Stripe.Checkout.SessionRetrieveParams', 'Stripe.Checkout.Session'],
  ['POST', '/v1/checkout/sessions/{id}/expire', 'Stripe.Checkout.SessionExpireParams', 'Stripe.Checkout.Session'],
  ['GET', '/v1/invoices', 'Stripe.InvoiceListParams', 'Stripe.ApiList<Stripe.Invoice>'],
  ['GET', '/v1/invoices/{id}', 'Stripe.InvoiceRetrieveParams', 'Stripe.Invoice'],
  ['POST', '/v1/credit_notes', 'Stripe.CreditNoteCreateParams', 'Stripe.CreditNote'],
  ['GET', '/v1/credit_notes', 'Stripe.CreditNoteListParams', 'Stripe.ApiList<Stripe.CreditNote>'],
  ['GET', '/v1/refunds', 'Stripe.RefundListParams', 'Stripe.ApiList<Stripe.Refund>'],
  ['POST', '/v1/billing_portal/sessions', 'Stripe.BillingPortal.SessionCreateParams', 'Stripe.BillingPortal.Session'],
  ['POST', '/v1/billing_portal/configurations', 'Stripe.BillingPortal.ConfigurationCreateParams', 'Stripe.BillingPortal.Configuration'],
  ['POST', '/v1/billing_portal/configurations/{id}', 'Stripe.BillingPortal.ConfigurationUpdateParams', 'Stripe.BillingPortal.Configuration'],
  ['GET', '/v1/billing_portal/configurations', 'Stripe.BillingPortal.ConfigurationListParams', 'Stripe.ApiList<Stripe.BillingPortal.Configuration>'],
  ['GET', '/v1/subscriptions', 'Stripe.SubscriptionListParams', 'Stripe.ApiList<Stripe.Subscription>'],
  ['GET', '/v1/subscriptions/{id}', 'Stripe.SubscriptionRetrieveParams', 'Stripe.Subscription'],
  ['POST', '/v1/subscriptions/{id}', 'Stripe.SubscriptionUpdateParams', 'Stripe.Subscription'],
  ['DELETE', '/v1/subscriptions/{id}', 'Stripe.SubscriptionCancelParams', 'Stripe.Subscription'],
  ['POST', '/v1/billing/meters', 'Stripe.Billing.MeterCreateParams', 'Stripe.Billing.Meter'],
  ['GET', '/v1/billing/meters', 'Stripe.Billing.MeterListParams', 'Stripe.ApiList<Stripe.Billing.Meter>'],
  ['POST', '/v1/billing/meter_events', 'Stripe.Billing.MeterEventCreateParams', 'Stripe.Billing.MeterEvent'],
  ['POST', '/v1/webhook_endpoints', 'Stripe.WebhookEndpointCreateParams', 'Stripe.WebhookEndpoint'],
  ['POST', '/v1/webhook_endpoints/{id}', 'Stripe.WebhookEndpointUpdateParams', 'Stripe.WebhookEndpoint'],
  ['GET', '/v1/webhook_endpoints', 'Stripe.WebhookEndpointListParams', 'Stripe.ApiList<Stripe.WebhookEndpoint>'],
].map(([method, pattern, params, answer]) => ({
  method,
  pattern,
  params,
  answer,
  re: new RegExp('^' + pattern.replace(/\{[a-z_]+\}/g, '[^/]+') + '$'),
}));

const ERROR_TYPE = '{ error: Stripe.StripeRawError }';

/** Every field optional, recursively; unknown fields and wrong types still fail. A
 * `Stripe.Decimal` stays itself (its wire form, a decimal string, is cast to it). */
const DEEP_PARTIAL = `type DeepPartial<T> =
  T extends string | number | boolean | bigint | symbol | null | undefined ? T
  : T extends Stripe.Decimal ? T
  : T extends ReadonlyArray<infer U> ? Array<DeepPartial<U>>
  : { [K in keyof T]?: DeepPartial<T[K]> };`;

const COMPILER_OPTIONS_JSON = {
  strict: true,
  noEmit: true,
  target: 'es2022',
  module: 'nodenext',
  moduleResolution: 'nodenext',
  skipLibCheck: true,
  types: [],
};

class Usage extends Error {}

function loadTypescript() {
  try {
    return require('typescript');
  } catch {
    throw new Usage(`typescript is not installed: run \`npm ci\` in ${path.relative(process.cwd(), HERE) || '.'}`);
  }
}

function stripeNodeInfo() {
  const dir = path.join(HERE, 'node_modules', 'stripe');
  let version;
  try {
    version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
  } catch {
    throw new Usage(`stripe is not installed: run \`npm ci\` in ${path.relative(process.cwd(), HERE) || '.'}`);
  }
  const src = fs.readFileSync(path.join(dir, 'cjs', 'apiVersion.js'), 'utf8');
  const apiVersion = /ApiVersion\s*=\s*'([^']+)'/.exec(src)?.[1];
  return { version, apiVersion };
}

/** The API version the emulator answers in, when its source is beside this directory. */
function emulatorApiVersion() {
  try {
    const src = fs.readFileSync(path.join(HERE, '..', 'stripe-emulator', 'src', 'objects.rs'), 'utf8');
    return /API_VERSION:\s*&str\s*=\s*"([^"]+)"/.exec(src)?.[1];
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Reading captures

function captureFiles(args) {
  const files = [];
  for (const a of args) {
    let st;
    try {
      st = fs.statSync(a);
    } catch {
      throw new Usage(`no such file or directory: ${a}`);
    }
    if (st.isDirectory()) {
      const inDir = fs
        .readdirSync(a)
        .filter((f) => f.endsWith('.jsonl'))
        .sort()
        .map((f) => path.join(a, f));
      files.push(...inDir);
    } else {
      files.push(a);
    }
  }
  return files;
}

/** Parsed capture lines; malformed ones become issues. */
function readCaptures(files, issues) {
  const records = [];
  for (const file of files) {
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    lines.forEach((text, i) => {
      if (!text.trim()) return;
      const origin = { file, line: i + 1, method: '?', path: '?' };
      let r;
      try {
        r = JSON.parse(text);
      } catch (e) {
        issues.push({ origins: [origin], where: 'capture', message: `not JSON: ${e.message}` });
        return;
      }
      origin.method = String(r?.method ?? '?').toUpperCase();
      origin.path = String(r?.path ?? '?');
      const bad =
        typeof r !== 'object' || r === null
          ? 'not an object'
          : typeof r.method !== 'string' || typeof r.path !== 'string'
            ? 'method and path must be strings'
            : !Number.isInteger(r.status)
              ? 'status must be an integer'
              : r.params !== undefined && (typeof r.params !== 'object' || r.params === null || Array.isArray(r.params))
                ? 'params must be an object'
                : !('response' in r)
                  ? 'no response'
                  : null;
      if (bad) {
        issues.push({ origins: [origin], where: 'capture', message: `malformed capture line: ${bad}` });
        return;
      }
      records.push({ origin, method: origin.method, path: r.path.split('?')[0].replace(/(.)\/+$/, '$1'), params: r.params ?? {}, status: r.status, response: r.response });
    });
  }
  return records;
}

// ---------------------------------------------------------------------------------------------
// Walking a JSON value along its declared TypeScript type

/** Walks JSON values along stripe-node types: coerces form strings, notes open-enum values the
 * SDK does not list, builds a deduplication signature, and collects field coverage. */
class Walker {
  constructor(ts, checker) {
    this.ts = ts;
    this.checker = checker;
    this.F = ts.TypeFlags;
  }

  flatten(types) {
    const out = [];
    for (const t of types) {
      if (t.isUnion()) out.push(...t.types);
      else out.push(t);
    }
    return out;
  }

  isDecimal(t) {
    return t.aliasSymbol?.name === 'Decimal' || this.checker.typeToString(t) === 'Decimal';
  }

  /** `string & Record<never, never>`: stripe-node's OtherString of open enums. */
  isOtherString(t) {
    return (t.flags & this.F.Intersection) !== 0 && t.types.some((m) => m.flags & this.F.String);
  }

  isObjectLike(t) {
    const F = this.F;
    if (this.isDecimal(t) || this.isOtherString(t)) return false;
    return (t.flags & (F.Object | F.Intersection | F.NonPrimitive)) !== 0;
  }

  leafInfo(cands) {
    const F = this.F;
    const info = { any: false, string: false, otherString: false, literals: new Set(), number: false, boolean: false, decimal: false };
    for (const t of cands) {
      if (t.flags & (F.Any | F.Unknown)) info.any = true;
      else if (t.flags & (F.String | F.TemplateLiteral | F.StringMapping)) info.string = true;
      else if (t.flags & F.StringLiteral) info.literals.add(t.value);
      else if (t.flags & (F.Number | F.NumberLiteral)) info.number = true;
      else if (t.flags & (F.Boolean | F.BooleanLiteral)) info.boolean = true;
      else if (this.isDecimal(t)) info.decimal = true;
      else if (this.isOtherString(t)) info.otherString = true;
    }
    return info;
  }

  propTypes(objCands, key) {
    const out = [];
    for (const c of objCands) {
      const p = this.checker.getPropertyOfType(c, key);
      if (p) {
        out.push(this.checker.getTypeOfSymbol(p));
        continue;
      }
      for (const info of this.checker.getIndexInfosOfType(c)) {
        if (info.keyType.flags & (this.F.String | this.F.TemplateLiteral)) out.push(info.type);
      }
    }
    return this.flatten(out);
  }

  elementTypes(cands) {
    const out = [];
    for (const c of cands) {
      if (this.checker.isArrayType(c) || this.checker.isTupleType(c)) out.push(...this.checker.getTypeArguments(c));
    }
    return this.flatten(out);
  }

  /** The candidates an object's `object` field picks (`"customer"` → Stripe.Customer, not
   * Stripe.DeletedCustomer unless `deleted` is true). */
  discriminate(objCands, value) {
    if (typeof value.object !== 'string') return objCands;
    const matching = objCands.filter((c) => {
      const p = this.checker.getPropertyOfType(c, 'object');
      if (!p) return false;
      const lits = this.flatten([this.checker.getTypeOfSymbol(p)]).filter((t) => t.flags & this.F.StringLiteral);
      return lits.some((t) => t.value === value.object);
    });
    if (matching.length > 1) {
      const del = matching.filter((c) => this.checker.getPropertyOfType(c, 'deleted'));
      const pick = value.deleted === true ? del : matching.filter((c) => !del.includes(c));
      if (pick.length) return pick;
    }
    return matching.length ? matching : objCands;
  }

  /**
   * value: JSON value; cands: declared types here (null: unknown place);
   * form: string leaves come from a form body (coerce them).
   * Returns { value, sig } where value may hold Decimal markers; notes go to ctx.
   */
  walk(value, cands, form, jpath, ctx) {
    const tcands = cands && this.flatten(cands);
    if (Array.isArray(value)) {
      const el = tcands ? this.elementTypes(tcands) : null;
      const elc = el && el.length ? el : tcands && this.leafInfo(tcands).any ? null : el;
      const items = value.map((v, i) => this.walk(v, elc, form, `${jpath}[${i}]`, ctx));
      const sigs = [...new Set(items.map((x) => x.sig))].sort();
      return { value: items.map((x) => x.value), sig: `[${sigs.join('|')}]` };
    }
    if (value !== null && typeof value === 'object') {
      let objCands = tcands ? tcands.filter((t) => this.isObjectLike(t)) : null;
      if (objCands && objCands.length) objCands = this.discriminate(objCands, value);
      if (!form && typeof value.object === 'string') ctx.sawObject(value, objCands, jpath);
      if (form && objCands && objCands.length) {
        // required parameters (TypeScript reports a missing one only when nothing else fails)
        const missing = objCands.map((c) =>
          this.checker.getPropertiesOfType(c).filter((p) => !(p.flags & this.ts.SymbolFlags.Optional) && !Object.hasOwn(value, p.name)).map((p) => p.name),
        );
        if (missing.every((m) => m.length)) ctx.missingKeys(jpath, missing[0]);
      }
      const out = Object.create(null); // a `__proto__` key stays a key
      const sigs = [];
      for (const k of Object.keys(value)) {
        let pc = null;
        const kpath = jpath ? `${jpath}.${k}` : k;
        if (objCands && objCands.length) {
          pc = this.propTypes(objCands, k);
          if (!pc.length) {
            pc = null;
            ctx.unknownKey(kpath, k);
          }
        }
        const r = this.walk(value[k], pc, form, kpath, ctx);
        out[k] = r.value;
        sigs.push(`${JSON.stringify(k)}:${r.sig}`);
      }
      return { value: out, sig: `{${sigs.sort().join(',')}}` };
    }
    if (typeof value === 'string') {
      const info = tcands && this.leafInfo(tcands);
      if (form) return this.coerce(value, info, jpath, ctx);
      if (info && info.decimal && !info.string && /^-?\d+(\.\d+)?$/.test(value)) return { value: new DecimalLit(value), sig: 'd' };
      this.enumCheck(value, info, jpath, ctx);
      return { value, sig: info && info.literals.size ? `s${JSON.stringify(value)}` : 's' };
    }
    if (typeof value === 'number') return { value, sig: 'n' };
    if (typeof value === 'boolean') return { value, sig: `b${value}` };
    return { value, sig: 'null' };
  }

  enumCheck(s, info, jpath, ctx) {
    if (info && info.otherString && !info.string && !info.any && info.literals.size && !info.literals.has(s)) {
      ctx.enumValue(jpath, s, [...info.literals]);
    }
  }

  coerce(s, info, jpath, ctx) {
    const sig = (v, tag) => ({ value: v, sig: info && info.literals.size ? `${tag}${JSON.stringify(v)}` : tag });
    if (!info || info.any) {
      // no declared type here (an unknown parameter): the plain rule
      if (s === 'true' || s === 'false') return { value: s === 'true', sig: `b${s}` };
      if (/^-?\d+$/.test(s)) return { value: Number(s), sig: 'n' };
      return { value: s, sig: 's' };
    }
    if (info.literals.has(s) || info.string) return sig(s, 's');
    if (info.boolean && (s === 'true' || s === 'false')) return { value: s === 'true', sig: `b${s}` };
    if (info.number && /^-?\d+(\.\d+)?$/.test(s)) return { value: Number(s), sig: 'n' };
    if (info.decimal && /^-?\d+(\.\d+)?$/.test(s)) return { value: new DecimalLit(s), sig: 'd' };
    this.enumCheck(s, info, jpath, ctx);
    return sig(s, 's');
  }
}

class DecimalLit {
  constructor(s) {
    this.s = s;
  }
}

// ---------------------------------------------------------------------------------------------
// Emitting TypeScript

/** Pretty-prints a value as a TypeScript expression, one property or element a line, and
 * records the JSON path each line starts. */
function emitLiteral(value, indent, jpath, lines, firstPrefix, suffix) {
  const pad = '  '.repeat(indent);
  if (value instanceof DecimalLit) {
    lines.push({ text: `${firstPrefix}(${JSON.stringify(value.s)} as unknown as Stripe.Decimal)${suffix}`, path: jpath });
  } else if (Array.isArray(value)) {
    if (!value.length) return lines.push({ text: `${firstPrefix}[]${suffix}`, path: jpath });
    lines.push({ text: `${firstPrefix}[`, path: jpath });
    value.forEach((v, i) => emitLiteral(v, indent + 1, `${jpath}[${i}]`, lines, `${pad}  `, ','));
    lines.push({ text: `${pad}]${suffix}`, path: jpath });
  } else if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value);
    if (!keys.length) return lines.push({ text: `${firstPrefix}{}${suffix}`, path: jpath });
    lines.push({ text: `${firstPrefix}{`, path: jpath });
    for (const k of keys) {
      emitLiteral(value[k], indent + 1, jpath ? `${jpath}.${k}` : k, lines, `${pad}  ${JSON.stringify(k)}: `, ',');
    }
    lines.push({ text: `${pad}}${suffix}`, path: jpath });
  } else {
    lines.push({ text: `${firstPrefix}${JSON.stringify(value)}${suffix}`, path: jpath });
  }
}

// ---------------------------------------------------------------------------------------------
// The check

function compilerOptions(ts) {
  const { options, errors } = ts.convertCompilerOptionsFromJson(COMPILER_OPTIONS_JSON, HERE);
  if (errors.length) throw new Usage(ts.flattenDiagnosticMessageText(errors[0].messageText, '\n'));
  return options;
}

function shortPath(f) {
  const rel = path.relative(process.cwd(), f);
  return rel && !rel.startsWith('..') ? rel : f;
}

function describeOrigin(o) {
  return `${shortPath(o.file)}:${o.line} ${o.method} ${o.path}`;
}

/** `Stripe.Checkout.Session` for the interface declared in resources/Checkout/Sessions.d.ts. */
function stripeTypeName(ts, type) {
  const sym = type.getSymbol() ?? type.aliasSymbol;
  const decl = sym?.declarations?.[0];
  if (!sym || !decl) return '?';
  const m = /resources\/(?:([A-Za-z]+)\/)?[A-Za-z]+\.d\.ts$/.exec(decl.getSourceFile().fileName);
  return `Stripe.${m?.[1] ? `${m[1]}.` : ''}${sym.name}`;
}

/**
 * Checks capture files; returns { issues, warnings, report, stats }. Writes the generated
 * TypeScript into outDir (which must lie inside this package, for `stripe` to resolve).
 */
export function runCheck(files, { outDir, allowUnknownEnumValues = false } = {}) {
  const ts = loadTypescript();
  const stripe = stripeNodeInfo();
  const issues = [];
  const warnings = [];
  const emuVersion = emulatorApiVersion();
  if (emuVersion && stripe.apiVersion !== emuVersion) {
    issues.push({
      origins: [],
      where: 'setup',
      message: `stripe-node ${stripe.version} pins API version ${stripe.apiVersion}, the emulator answers in ${emuVersion}: pin the stripe-node release of ${emuVersion} in package.json`,
    });
  }
  const records = readCaptures(files, issues);
  if (!records.length && !issues.length) {
    issues.push({ origins: [], where: 'capture', message: `no captured requests (${files.length} capture file(s)): was STRIPE_EMULATOR_CAPTURE set for the tests?` });
  }

  fs.mkdirSync(outDir, { recursive: true });
  const options = compilerOptions(ts);

  // 1. The declared types, resolved once by the compiler.
  const typeNames = [...new Set([...ROUTES.flatMap((r) => [r.params, r.answer]), ERROR_TYPE])];
  const typesFile = path.join(outDir, 'types.ts');
  fs.writeFileSync(
    typesFile,
    `import type Stripe from 'stripe';\n${typeNames.map((t, i) => `export type T${i} = ${t};`).join('\n')}\n`,
  );
  const programA = ts.createProgram([typesFile], options);
  const diagA = ts.getPreEmitDiagnostics(programA);
  if (diagA.length) {
    const text = ts.formatDiagnostics(diagA, { getCanonicalFileName: (f) => f, getCurrentDirectory: () => process.cwd(), getNewLine: () => '\n' });
    throw new Usage(`the types in ROUTES do not resolve in stripe-node ${stripe.version}:\n${text}`);
  }
  const checker = programA.getTypeChecker();
  const sfA = programA.getSourceFile(typesFile);
  const declared = new Map();
  for (const st of sfA.statements) {
    if (ts.isTypeAliasDeclaration(st)) declared.set(typeNames[Number(st.name.text.slice(1))], checker.getTypeFromTypeNode(st.type));
  }

  // 2. Walk every record: coerce, dedupe, note enum values and field coverage.
  const walker = new Walker(ts, checker);
  const coverage = new Map(); // object name -> { typeName, declared: string[], returned: Set, count }
  const shapes = new Map(); // dedupe key -> constant
  const constants = [];
  const routesSeen = new Map(ROUTES.map((r) => [r, 0]));
  const counters = { r: 0, a: 0, e: 0 };
  const add = (kind, type, walked, origin) => {
    const key = `${kind}|${type}|${walked.sig}`;
    let c = shapes.get(key);
    if (!c) {
      counters[kind] += 1;
      c = { name: `${kind}${counters[kind]}`, kind, type, value: walked.value, origins: [], notes: [] };
      shapes.set(key, c);
      constants.push(c);
    }
    c.origins.push(origin);
    return c;
  };

  for (const rec of records) {
    const route = ROUTES.find((r) => r.method === rec.method && r.re.test(rec.path));
    if (!route) {
      issues.push({
        origins: [rec.origin],
        where: 'route',
        message: `no stripe-node type is mapped for ${rec.method} ${rec.path}: add the route to ROUTES in infra/stripe-oracle/check.mjs`,
      });
      continue;
    }
    routesSeen.set(route, routesSeen.get(route) + 1);
    const notes = [];
    const ctx = {
      enumValue: (jpath, value, known) =>
        notes.push({
          kind: 'enum',
          path: jpath,
          message: `'${value}' is not a value stripe-node ${stripe.version} lists for this open enum (${known.map((k) => `'${k}'`).join(', ')})`,
        }),
      // TypeScript reports an unknown property only when the literal has no other error, so
      // they are found here too.
      missingKeys: (jpath, keys) =>
        notes.push({ kind: 'missing', path: jpath, message: `required by stripe-node ${stripe.version} and missing: ${keys.join(', ')}` }),
      unknownKey: (jpath, key) =>
        notes.push({ kind: 'unknown', path: jpath, message: `'${key}' is not declared by stripe-node ${stripe.version} here` }),
      sawObject: (obj, objCands, jpath) => {
        const name = obj.object;
        let entry = coverage.get(name);
        if (!entry) {
          entry = { typeName: null, declared: null, returned: new Set(), count: 0, undeclaredAt: new Set() };
          coverage.set(name, entry);
        }
        entry.count += 1;
        for (const k of Object.keys(obj)) entry.returned.add(k);
        const typed = (objCands || []).find((c) => {
          const p = checker.getPropertyOfType(c, 'object');
          return p && walker.flatten([checker.getTypeOfSymbol(p)]).some((t) => t.value === name);
        });
        if (typed && !entry.declared) {
          entry.typeName = stripeTypeName(ts, typed);
          // `deleted?: void` only tells an object from its Deleted… form: never a field
          const props = checker.getPropertiesOfType(typed).filter((p) => {
            const t = checker.getTypeOfSymbol(p);
            return !(t.isUnion() ? t.types : [t]).every((x) => x.flags & (ts.TypeFlags.Void | ts.TypeFlags.Undefined));
          });
          entry.declared = props.map((p) => p.name);
          entry.required = props.filter((p) => !(p.flags & ts.SymbolFlags.Optional)).map((p) => p.name);
        } else if (!typed) entry.undeclaredAt.add(jpath || '(answer)');
      },
    };
    const flush = (c, where) => {
      for (const n of notes.splice(0)) {
        if (!c.notes.some((x) => x.path === n.path && x.message === n.message)) c.notes.push({ ...n, where });
      }
    };
    // request parameters
    const rp = walker.walk(rec.params, [declared.get(route.params)], true, '', ctx);
    flush(add('r', route.params, rp, rec.origin), 'request');
    // the answer
    if (rec.status >= 200 && rec.status < 300) {
      if (rec.response === null || typeof rec.response !== 'object' || Array.isArray(rec.response)) {
        issues.push({ origins: [rec.origin], where: 'answer', message: `a ${rec.status} answer must be a JSON object` });
        continue;
      }
      const ra = walker.walk(rec.response, [declared.get(route.answer)], false, '', ctx);
      flush(add('a', `DeepPartial<${route.answer}>`, ra, rec.origin), 'answer');
    } else if (rec.status >= 400) {
      const err = rec.response?.error;
      if (err === null || typeof err !== 'object' || typeof err.type !== 'string' || typeof err.message !== 'string') {
        issues.push({ origins: [rec.origin], where: 'answer', message: `a ${rec.status} answer must be {"error": {...}} with string type and message` });
      }
      const re = walker.walk(rec.response, [declared.get(ERROR_TYPE)], false, '', ctx);
      flush(add('e', ERROR_TYPE, re, rec.origin), 'answer');
    } else {
      issues.push({ origins: [rec.origin], where: 'answer', message: `unexpected status ${rec.status}` });
    }
  }

  for (const c of constants) {
    for (const n of c.notes) {
      const entry = { origins: c.origins, where: n.where, path: n.path, message: n.message };
      (n.kind === 'enum' && allowUnknownEnumValues ? warnings : issues).push(entry);
    }
  }

  // 3. Generate the TypeScript and compile it.
  const header = [
    '// Generated by infra/stripe-oracle/check.mjs from Stripe emulator captures. Do not edit.',
    "import type Stripe from 'stripe';",
    DEEP_PARTIAL,
    '',
  ].join('\n');
  const lines = header.split('\n').map((text) => ({ text, path: null, constant: null }));
  for (const c of constants) {
    const first = c.origins[0];
    lines.push({ text: `// ${first.method} ${first.path} (${c.origins.length} captured)`, path: null, constant: null });
    const body = [];
    emitLiteral(c.value, 0, '', body, `export const ${c.name}: ${c.type} = `, ';');
    for (const l of body) lines.push({ ...l, constant: c });
  }
  const checkedFile = path.join(outDir, 'checked.ts');
  fs.writeFileSync(checkedFile, lines.map((l) => l.text).join('\n') + '\n');
  fs.writeFileSync(
    path.join(outDir, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: COMPILER_OPTIONS_JSON, files: ['checked.ts'] }, null, 2) + '\n',
  );
  const started = Date.now();
  const programB = ts.createProgram([checkedFile], options, undefined, programA);
  const sfB = programB.getSourceFile(checkedFile);
  const diags = [...programB.getOptionsDiagnostics(), ...programB.getGlobalDiagnostics(), ...ts.getPreEmitDiagnostics(programB, sfB)];
  const tscMs = Date.now() - started;
  const seen = new Set();
  for (const d of diags) {
    const message = ts.flattenDiagnosticMessageText(d.messageText, '\n');
    const line = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
    const at = lines[line];
    const key = `${line}|${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    if (!at?.constant) {
      issues.push({ origins: [], where: 'tsc', message: `TS${d.code} ${message}` });
      continue;
    }
    const c = at.constant;
    // an unknown property the walker reported already
    if (d.code === 2353 && c.notes.some((n) => n.kind === 'unknown' && n.path === at.path)) continue;
    // a missing required property the walker reported already
    if ((d.code === 2741 || d.code === 2739) && c.notes.some((n) => n.kind === 'missing' && n.path === at.path)) continue;
    issues.push({
      origins: c.origins,
      where: c.kind === 'r' ? 'request' : 'answer',
      path: at.path,
      message: `TS${d.code} ${message}`,
      constant: c.name,
      tsLine: line + 1,
    });
  }

  const firstOrigin = (i) => i.origins[0] ?? { file: '', line: 0 };
  issues.sort((a, b) => {
    const x = firstOrigin(a);
    const y = firstOrigin(b);
    return x.file.localeCompare(y.file) || x.line - y.line || (a.path ?? '').localeCompare(b.path ?? '');
  });

  // 4. Field coverage.
  const report = [...coverage.entries()]
    .sort((a, b) => a[0].localeCompare(b[0]))
    .map(([name, e]) => ({
      object: name,
      typeName: e.typeName,
      count: e.count,
      declared: e.declared,
      returned: [...e.returned].sort(),
      required: e.required,
      neverReturned: e.declared ? e.declared.filter((f) => !e.returned.has(f)).sort() : null,
      notDeclared: e.declared ? [...e.returned].filter((f) => !e.declared.includes(f)).sort() : null,
      undeclaredAt: [...e.undeclaredAt],
    }));
  return {
    issues,
    warnings,
    report,
    stats: {
      stripe,
      emuVersion,
      files: files.length,
      lines: records.length,
      constants: counters,
      routesSeen: [...routesSeen.entries()].map(([r, n]) => ({ route: `${r.method} ${r.pattern}`, n })),
      checkedFile,
      tscMs,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Output

function printResult(res, { out = console.log } = {}) {
  const { stats, report, issues, warnings } = res;
  out(`stripe-oracle: stripe-node ${stats.stripe.version} (API ${stats.stripe.apiVersion}), emulator API ${stats.emuVersion ?? '(unknown)'}`);
  out(
    `checked ${stats.lines} captured request(s) from ${stats.files} file(s) as ${stats.constants.r} request shape(s), ${stats.constants.a} answer shape(s), ${stats.constants.e} error shape(s); compiler ${stats.tscMs} ms`,
  );
  const unused = stats.routesSeen.filter((r) => !r.n);
  out(`routes exercised: ${stats.routesSeen.length - unused.length}/${stats.routesSeen.length}`);
  if (unused.length) out(`  never called: ${unused.map((r) => r.route).join(', ')}`);

  out('');
  out(`Field coverage: top-level fields the emulator returned / fields stripe-node ${stats.stripe.version} declares`);
  out('  (always present: the fields declared without `?`, which Stripe sends in every answer, null or not)');
  const w = Math.max(8, ...report.map((r) => r.object.length));
  for (const r of report) {
    if (!r.declared) {
      out(`  ${r.object.padEnd(w)}  ?/?   no stripe-node type at ${r.undeclaredAt.join(', ')} (${r.count} seen)`);
      continue;
    }
    const have = r.returned.filter((f) => r.declared.includes(f)).length;
    const haveReq = r.required.filter((f) => r.returned.includes(f)).length;
    const missingReq = r.neverReturned.filter((f) => r.required.includes(f));
    const missingOpt = r.neverReturned.filter((f) => !r.required.includes(f));
    out(
      `  ${r.object.padEnd(w)}  ${`${have}/${r.declared.length}`.padEnd(6)} (always present: ${haveReq}/${r.required.length})  ${r.typeName}, ${r.count} seen`,
    );
    const pad = ''.padEnd(w);
    if (missingReq.length) out(`  ${pad}  never returned, always present on Stripe: ${missingReq.join(', ')}`);
    if (missingOpt.length) out(`  ${pad}  never returned, optional (present only in some cases): ${missingOpt.join(', ')}`);
    if (r.notDeclared.length) out(`  ${pad}  returned but not declared: ${r.notDeclared.join(', ')}`);
  }

  const show = (list, label) => {
    for (const i of list) {
      const o = i.origins;
      const first = o.length ? describeOrigin(o[0]) : '(no capture line)';
      const where = `${i.where}${i.path ? ` at ${i.path}` : ''}`;
      out(`${label} ${first}: ${where}`);
      for (const l of i.message.split('\n').slice(0, 6)) out(`    ${l.length > 400 ? `${l.slice(0, 400)}…` : l}`);
      if (o.length > 1) {
        const more = o.slice(1, 4).map((x) => `${path.basename(x.file)}:${x.line}`).join(', ');
        out(`    (same shape on ${o.length - 1} more captured line(s): ${more}${o.length > 4 ? ', …' : ''})`);
      }
    }
  };
  if (warnings.length) {
    out('');
    show(warnings, 'WARN');
  }
  out('');
  if (issues.length) {
    show(issues, 'FAIL');
    out('');
    out(`stripe-oracle: FAILED, ${issues.length} problem(s). Generated TypeScript: ${shortPath(stats.checkedFile)}`);
    out(`  (recompile it: ${shortPath(path.join(HERE, 'node_modules', '.bin', 'tsc'))} -p ${shortPath(path.dirname(stats.checkedFile))})`);
  } else {
    out(`stripe-oracle: OK, every captured request and answer matches stripe-node ${stats.stripe.version}'s declarations`);
  }
}

// ---------------------------------------------------------------------------------------------
// Self-test

function selfTest() {
  const dir = path.join(HERE, '.out', 'self-test');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const session = {
    id: 'cs_test_1', object: 'checkout.session', mode: 'subscription', status: 'open', payment_status: 'unpaid',
    url: 'http://emu/checkout/cs_test_1', ui_mode: 'hosted_page', metadata: { user_id: '42' }, customer: null,
    amount_total: 1000, currency: 'jpy', livemode: false, created: 1764000000,
  };
  const error = { error: { type: 'invalid_request_error', code: 'resource_missing', message: "No such price: 'price_nope'", param: 'line_items[0][price]' } };
  const good = {
    mode: 'subscription', success_url: 'https://x/ok', cancel_url: 'https://x/no', client_reference_id: '42',
    line_items: [{ price: 'price_1', quantity: '1' }], metadata: { user_id: '42', user_name: 'alice' },
    subscription_data: { metadata: { user_id: '42' }, trial_period_days: '7' },
  };
  const cases = [
    // [what, capture line, must fail, text the failure must mention]
    ['a misspelt parameter (line_item)', { method: 'POST', path: '/v1/checkout/sessions', params: { ...good, line_items: undefined, line_item: [{ price: 'price_1', quantity: '1' }] }, status: 200, response: session }, true, 'line_item'],
    ['a wrong type (quantity "one")', { method: 'POST', path: '/v1/checkout/sessions', params: { ...good, line_items: [{ price: 'price_1', quantity: 'one' }] }, status: 200, response: session }, true, 'line_items[0].quantity'],
    ['a correct request', { method: 'POST', path: '/v1/checkout/sessions', params: good, status: 200, response: session }, false, null],
    ['a route the oracle does not map', { method: 'POST', path: '/v1/checkout/session', params: good, status: 404, response: error }, true, 'no stripe-node type is mapped'],
    ['an answer with a field Stripe does not have', { method: 'GET', path: '/v1/checkout/sessions/cs_test_1', params: { expand: ['subscription'] }, status: 200, response: { ...session, _price: 'price_1' } }, true, '_price'],
    ['an open-enum value stripe-node does not list (mode)', { method: 'POST', path: '/v1/checkout/sessions', params: { ...good, mode: 'subscriptions' }, status: 200, response: session }, true, "'subscriptions'"],
    ['a Stripe-shaped error answer', { method: 'POST', path: '/v1/checkout/sessions', params: { ...good, line_items: [{ price: 'price_nope', quantity: '1' }] }, status: 404, response: error }, false, null],
  ];
  const file = path.join(dir, 'capture.jsonl');
  fs.writeFileSync(file, cases.map(([, rec]) => JSON.stringify(rec)).join('\n') + '\n');
  const res = runCheck([file], { outDir: dir });
  const problems = [];
  cases.forEach(([what, , mustFail, mention], i) => {
    const mine = res.issues.filter((x) => x.origins.some((o) => o.file === file && o.line === i + 1));
    const text = mine.map((x) => `${x.path ?? ''} ${x.message}`).join('\n');
    if (mustFail && !mine.length) problems.push(`line ${i + 1}, ${what}: passed, should fail`);
    else if (mustFail && mention && !text.includes(mention)) problems.push(`line ${i + 1}, ${what}: failed without naming ${mention}:\n${text}`);
    else if (!mustFail && mine.length) problems.push(`line ${i + 1}, ${what}: failed, should pass:\n${text}`);
    else console.log(`self-test: line ${i + 1}, ${what}: ${mustFail ? 'fails' : 'passes'}, as it should${mine.length ? ` (${mine[0].path ? `${mine[0].path}: ` : ''}${mine[0].message.split('\n')[0].slice(0, 150)})` : ''}`);
  });
  const stray = res.issues.filter((x) => !x.origins.length);
  for (const s of stray) problems.push(`an issue on no capture line: ${s.message}`);
  if (problems.length) {
    for (const p of problems) console.log(`self-test: FAILED ${p}`);
    return 1;
  }
  console.log(`self-test: OK (${cases.length} cases, stripe-node ${res.stats.stripe.version}, compiler ${res.stats.tscMs} ms)`);
  return 0;
}

// ---------------------------------------------------------------------------------------------

function main(argv) {
  const args = argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    console.log('usage: node check.mjs [--allow-unknown-enum-values] CAPTURE.jsonl|DIR ...\n       node check.mjs --self-test');
    return 0;
  }
  if (args.includes('--self-test')) return selfTest();
  const allowUnknownEnumValues = args.includes('--allow-unknown-enum-values');
  const paths = args.filter((a) => !a.startsWith('--'));
  const unknown = args.filter((a) => a.startsWith('--') && a !== '--allow-unknown-enum-values');
  if (unknown.length) throw new Usage(`unknown option ${unknown[0]}`);
  if (!paths.length) throw new Usage('usage: node check.mjs [--allow-unknown-enum-values] CAPTURE.jsonl|DIR ...');
  const res = runCheck(captureFiles(paths), { outDir: path.join(HERE, '.out', 'check'), allowUnknownEnumValues });
  printResult(res);
  return res.issues.length ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    process.exitCode = main(process.argv);
  } catch (e) {
    if (e instanceof Usage) {
      console.error(`stripe-oracle: ${e.message}`);
      process.exitCode = 2;
    } else throw e;
  }
}
