//! Environment → settings, read once per cold start. A missing or malformed variable fails
//! init with an error naming it. The variable names of the original Python version are kept
//! where they mean the same.

use std::collections::HashMap;
use std::time::Duration;

use thiserror::Error;

use crate::domain::{Catalog, LookupKey};
use crate::flows::Settings;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("missing environment variable {0}")]
    Missing(&'static str),
    #[error("environment variable {name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
}

pub use crate::domain::Secret;

/// A snapshot of the environment (the process's, or given pairs in tests).
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// Sets (or replaces) one variable.
    pub fn set(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_string(), value.to_string());
    }

    /// The value, or `None` when unset or blank.
    pub fn optional(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub fn require(&self, name: &'static str) -> Result<&str, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing(name))
    }

    fn parse_secs(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        match self.optional(name) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => v.parse::<u64>().map(Duration::from_secs).map_err(|_| ConfigError::Malformed {
                name,
                reason: format!("expected a whole number of seconds, got {v:?}"),
            }),
        }
    }
}

fn http_url(name: &'static str, v: &str) -> Result<String, ConfigError> {
    let v = v.trim_end_matches('/');
    let rest = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(v.to_string()),
        _ => Err(ConfigError::Malformed { name, reason: format!("expected an http(s) URL, got {v:?}") }),
    }
}

/// Flow settings. `MY_DOMAIN` (the front end's URL) is required. The API's own URL, where
/// Stripe redirects after payment, is `API_URL`, or else built from `REST_API_ID`,
/// `AWS_REGION` and `STAGE_NAME`, or else (empty) taken from each request's API Gateway
/// domain and stage.
pub fn settings(env: &Env) -> Result<Settings, ConfigError> {
    // Browsers send the origin serialized: scheme and host lowercased, no default port; the
    // answer must equal it byte for byte.
    let app_url = normalise_origin(&http_url("MY_DOMAIN", env.require("MY_DOMAIN")?)?);
    let api_url = match (env.optional("API_URL"), env.optional("REST_API_ID")) {
        (Some(url), _) => http_url("API_URL", url)?,
        (None, Some(id)) => {
            let region = env.require("AWS_REGION")?;
            let stage = env.optional("STAGE_NAME").unwrap_or("prod");
            format!("https://{id}.execute-api.{region}.amazonaws.com/{stage}")
        }
        (None, None) => String::new(),
    };
    let mut s = Settings::new(app_url, api_url);
    s.catalog = catalog(env)?;
    if let Some(p) = env.optional("API_KEY_NAME_PREFIX") {
        s.key_name_prefix = p.to_string();
    }
    s.lease = env.parse_secs("FULFILMENT_LEASE_SECONDS", 60)?;
    s.past_due_grace = env.parse_secs("PAST_DUE_GRACE_SECONDS", 7 * 24 * 3600)?;
    s.rotation_max_grace = env.parse_secs("ROTATION_MAX_GRACE_SECONDS", 24 * 3600)?;
    if let Some(v) = env.optional("ROTATIONS_PER_DAY") {
        s.rotations_per_day = at_least_one("ROTATIONS_PER_DAY", v)?;
    }
    if let Some(v) = env.optional("USER_BUDGET_BURST") {
        s.user_budget.burst = at_least_one("USER_BUDGET_BURST", v)?;
        at_most("USER_BUDGET_BURST", u64::from(s.user_budget.burst), 1000)?;
    }
    s.user_budget.interval = env.parse_secs("USER_BUDGET_INTERVAL_SECONDS", s.user_budget.interval.as_secs())?;
    at_most("USER_BUDGET_INTERVAL_SECONDS", s.user_budget.interval.as_secs(), 86_400)?;
    s.checkout_reuse = env.parse_secs("CHECKOUT_REUSE_SECONDS", s.checkout_reuse.as_secs())?;
    // Stripe expires an unpaid Checkout Session after 24 hours.
    at_most("CHECKOUT_REUSE_SECONDS", s.checkout_reuse.as_secs(), 23 * 3600)?;
    if let Some(c) = env.optional("STRIPE_PORTAL_CONFIGURATION") {
        let id = c.strip_prefix("bpc_").filter(|r| !r.is_empty() && r.chars().all(|ch| ch.is_ascii_alphanumeric()));
        if id.is_none() {
            return Err(ConfigError::Malformed {
                name: "STRIPE_PORTAL_CONFIGURATION",
                reason: format!(
                    "expected a billing portal configuration id (bpc_…, printed by paykey-setup), got {c:?}"
                ),
            });
        }
        s.portal_configuration = Some(c.to_string());
    }
    if let Some(list) = env.optional("ALLOWED_ORIGINS") {
        s.allowed_origins = parse_allowed_origins(list)?;
    }
    // 0 or unset: off. At most 60: the reclaim reads that many days of GetUsage and more.
    if let Some(v) = env.optional("FREE_KEY_IDLE_DAYS").filter(|v| *v != "0") {
        let days = at_least_one("FREE_KEY_IDLE_DAYS", v)?;
        at_most("FREE_KEY_IDLE_DAYS", u64::from(days), 60)?;
        s.free_key_idle_days = Some(days);
    }
    Ok(s)
}

/// The most origins `ALLOWED_ORIGINS` may list (each is compared on every request).
pub const MAX_ALLOWED_ORIGINS: usize = 20;

/// `https://App.Example.com:443/path` → `https://app.example.com/path`: the scheme and host as
/// a browser serializes an origin (lowercase, without the scheme's default port); the rest
/// kept.
pub fn normalise_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let scheme = scheme.to_ascii_lowercase();
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut host = host.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    if let Some(h) = host.strip_suffix(default_port) {
        host = h.to_string();
    }
    format!("{scheme}://{host}{path}")
}

/// `ALLOWED_ORIGINS`: front-end origins besides `MY_DOMAIN`'s, comma-separated, each
/// `scheme://host[:port]` (no path, no trailing slash), normalised as browsers send `Origin`
/// ([`normalise_origin`]).
pub fn parse_allowed_origins(list: &str) -> Result<Vec<String>, ConfigError> {
    const NAME: &str = "ALLOWED_ORIGINS";
    let mut out: Vec<String> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let rest = item.strip_prefix("https://").or_else(|| item.strip_prefix("http://"));
        let ok = rest.is_some_and(|host| {
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        });
        if !ok {
            return Err(ConfigError::Malformed {
                name: NAME,
                reason: format!("expected origins like https://app.example.com (no path), got {item:?}"),
            });
        }
        let origin = normalise_origin(item);
        if !out.contains(&origin) {
            out.push(origin);
        }
    }
    if out.len() > MAX_ALLOWED_ORIGINS {
        return Err(ConfigError::Malformed {
            name: NAME,
            reason: format!("at most {MAX_ALLOWED_ORIGINS} origins, got {}", out.len()),
        });
    }
    Ok(out)
}

/// The functions that open the billing portal (checkout, portal) refuse to start without
/// paykey's portal configuration: Stripe's default is the Dashboard's (or none at all).
pub fn require_portal_configuration(settings: &Settings) -> Result<(), ConfigError> {
    match settings.portal_configuration {
        Some(_) => Ok(()),
        None => Err(ConfigError::Missing("STRIPE_PORTAL_CONFIGURATION")),
    }
}

fn at_most(name: &'static str, v: u64, max: u64) -> Result<(), ConfigError> {
    if v > max {
        return Err(ConfigError::Malformed { name, reason: format!("at most {max}, got {v}") });
    }
    Ok(())
}

fn at_least_one(name: &'static str, v: &str) -> Result<u32, ConfigError> {
    v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| ConfigError::Malformed {
        name,
        reason: format!("expected a whole number of at least 1, got {v:?}"),
    })
}

/// `PAYKEY_CATALOG` (the tiers, as JSON; see `Catalog::parse`), or without it the catalog of
/// a deployment configured like the Python version's: FREE without a key, PRO on
/// `USAGE_PLAN_ID` for the lookup keys of `ALLOWED_LOOKUP_KEYS` (default `FMMailPro`).
pub fn catalog(env: &Env) -> Result<Catalog, ConfigError> {
    if let Some(json) = env.optional("PAYKEY_CATALOG") {
        if env.optional("ALLOWED_LOOKUP_KEYS").is_some() || env.optional("USAGE_PLAN_ID").is_some() {
            return Err(ConfigError::Malformed {
                name: "PAYKEY_CATALOG",
                reason: "set PAYKEY_CATALOG or ALLOWED_LOOKUP_KEYS / USAGE_PLAN_ID, not both (the catalog lists the lookup keys and usage plans)".into(),
            });
        }
        return Catalog::parse(json)
            .map_err(|e| ConfigError::Malformed { name: "PAYKEY_CATALOG", reason: e.to_string() });
    }
    let keys: Vec<LookupKey> = match env.optional("ALLOWED_LOOKUP_KEYS") {
        None => vec![LookupKey::parse("FMMailPro").expect("valid lookup key")],
        Some(keys) => keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                LookupKey::parse(k)
                    .map_err(|e| ConfigError::Malformed { name: "ALLOWED_LOOKUP_KEYS", reason: e.to_string() })
            })
            .collect::<Result<_, _>>()?,
    };
    if keys.is_empty() {
        return Err(ConfigError::Malformed { name: "ALLOWED_LOOKUP_KEYS", reason: "lists no lookup key".into() });
    }
    Ok(Catalog::legacy(env.optional("USAGE_PLAN_ID"), &keys))
}

/// For the functions that manage keys: every paid tier names its usage plan (without a
/// catalog: `USAGE_PLAN_ID` is set).
pub fn require_usage_plans(catalog: &Catalog) -> Result<(), ConfigError> {
    if catalog.paid().any(|t| t.usage_plan_id.is_none()) {
        return Err(ConfigError::Missing("USAGE_PLAN_ID"));
    }
    Ok(())
}

/// Checks the webhook signing secrets: one `whsec_…` value, or several separated by commas
/// (while a webhook endpoint is replaced, both endpoints' secrets are accepted).
pub fn check_webhook_secrets(secret: Secret) -> Result<Vec<Secret>, ConfigError> {
    let malformed = |reason: &str| ConfigError::Malformed { name: "STRIPE_WEBHOOK_SECRET", reason: reason.into() };
    let secrets: Vec<Secret> = secret.expose().split(',').map(|s| Secret::new(s.trim())).collect();
    if secrets.iter().any(|s| !s.expose().starts_with("whsec_")) {
        return Err(malformed("expected whsec_… signing secrets, separated by commas"));
    }
    Ok(secrets)
}

/// DynamoDB table names.
#[derive(Debug, Clone)]
pub struct Tables {
    /// `DYNAMODB_STRIPE_TABLE`: checkout sessions.
    pub sessions: String,
    /// `DYNAMODB_API_KEY_TABLE`: plans and key ids.
    pub api_keys: String,
}

impl Tables {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            sessions: env.require("DYNAMODB_STRIPE_TABLE")?.to_string(),
            api_keys: env.require("DYNAMODB_API_KEY_TABLE")?.to_string(),
        })
    }
}

/// `USER_POOL_ID`.
pub fn user_pool_id(env: &Env) -> Result<String, ConfigError> {
    Ok(env.require("USER_POOL_ID")?.to_string())
}

/// Stripe client settings.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// `STRIPE_API_KEY`: `sk_…` or `rk_…`.
    pub secret_key: Secret,
    /// `STRIPE_API_BASE`: another Stripe-compatible server (the local emulator), e.g.
    /// `http://127.0.0.1:12111/`. Unset: api.stripe.com.
    pub api_base: Option<String>,
    /// `PRICE_CACHE_SECONDS`: how long a warm container reuses a price lookup (0 = off).
    pub price_cache: Duration,
}

impl StripeConfig {
    /// With the secret key from `STRIPE_API_KEY`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let key = env.require("STRIPE_API_KEY")?;
        Self::with_secret(env, Secret::new(key))
    }

    /// With a secret key obtained elsewhere (SSM Parameter Store in the deployed stack).
    pub fn with_secret(env: &Env, secret_key: Secret) -> Result<Self, ConfigError> {
        let key = secret_key.expose();
        if !(key.starts_with("sk_") || key.starts_with("rk_")) {
            // Never echo the value: it may be a real key pasted in the wrong variable.
            return Err(ConfigError::Malformed {
                name: "STRIPE_API_KEY",
                reason: "expected a secret (sk_…) or restricted (rk_…) key".into(),
            });
        }
        Ok(Self {
            secret_key,
            api_base: stripe_api_base(env)?,
            price_cache: env.parse_secs("PRICE_CACHE_SECONDS", 300)?,
        })
    }
}

/// `STRIPE_API_BASE` with a trailing `/`, or `None` (api.stripe.com).
pub fn stripe_api_base(env: &Env) -> Result<Option<String>, ConfigError> {
    match env.optional("STRIPE_API_BASE") {
        Some(b) => Ok(Some(format!("{}/", http_url("STRIPE_API_BASE", b)?))),
        None => Ok(None),
    }
}

/// Where a secret comes from: the variable itself (local use), or the name of an SSM
/// SecureString parameter in `<NAME>_PARAMETER` (the deployed stack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Value(Secret),
    SsmParameter(String),
}

pub fn secret_source(env: &Env, name: &'static str, parameter: &'static str) -> Result<SecretSource, ConfigError> {
    match (env.optional(name), env.optional(parameter)) {
        (Some(v), _) => Ok(SecretSource::Value(Secret::new(v))),
        (None, Some(p)) => Ok(SecretSource::SsmParameter(p.to_string())),
        (None, None) => Err(ConfigError::Missing(if name == "STRIPE_API_KEY" {
            "STRIPE_API_KEY (or STRIPE_API_KEY_PARAMETER)"
        } else {
            "STRIPE_WEBHOOK_SECRET (or STRIPE_WEBHOOK_SECRET_PARAMETER)"
        })),
    }
}

/// Stripe Connect destination charges (platforms): `STRIPE_CONNECT_DESTINATION` (an
/// `acct_…` id) and `STRIPE_APPLICATION_FEE_PERCENT` (0–100, two decimals at most). Off when
/// the destination is unset.
pub fn connect(env: &Env) -> Result<Option<crate::domain::Connect>, ConfigError> {
    let Some(destination) = env.optional("STRIPE_CONNECT_DESTINATION") else {
        if env.optional("STRIPE_APPLICATION_FEE_PERCENT").is_some() {
            return Err(ConfigError::Missing("STRIPE_CONNECT_DESTINATION (set with STRIPE_APPLICATION_FEE_PERCENT)"));
        }
        return Ok(None);
    };
    if !destination.starts_with("acct_") {
        return Err(ConfigError::Malformed {
            name: "STRIPE_CONNECT_DESTINATION",
            reason: "expected an acct_… id".into(),
        });
    }
    let fee = match env.optional("STRIPE_APPLICATION_FEE_PERCENT") {
        None => None,
        Some(v) => {
            let f: f64 = v.parse().map_err(|_| ConfigError::Malformed {
                name: "STRIPE_APPLICATION_FEE_PERCENT",
                reason: format!("expected a number, got {v:?}"),
            })?;
            if !(0.0..=100.0).contains(&f) || (f * 100.0).fract() != 0.0 {
                return Err(ConfigError::Malformed {
                    name: "STRIPE_APPLICATION_FEE_PERCENT",
                    reason: "must be between 0 and 100 with at most two decimals".into(),
                });
            }
            Some(f)
        }
    };
    Ok(Some(crate::domain::Connect { destination: destination.to_string(), application_fee_percent: fee }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_gives_the_lookup_keys_and_is_checked_when_read() {
        let json = r#"{"tiers": [{"name": "FREE", "usage_plan_id": "f"},
            {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "p"},
            {"name": "BUSINESS", "lookup_key": "FMMailBiz", "usage_plan_id": "b", "trial_days": 7}]}"#;
        let s = settings(&Env::from_pairs([("MY_DOMAIN", "https://a.example"), ("PAYKEY_CATALOG", json)])).unwrap();
        let keys: Vec<&str> = s.catalog.paid().filter_map(|t| t.lookup_key.as_ref()).map(|k| k.as_str()).collect();
        assert_eq!(keys, ["FMMailPro", "FMMailBiz"]);
        assert_eq!(s.catalog.tiers().len(), 3);
        assert_eq!(s.catalog.usage_plans(), ["f", "p", "b"]);
        assert!(require_usage_plans(&s.catalog).is_ok());
        // without one: today's settings (PRO on USAGE_PLAN_ID, FREE without a key)
        let plain = settings(&Env::from_pairs([("MY_DOMAIN", "https://a.example"), ("USAGE_PLAN_ID", "u1")])).unwrap();
        assert_eq!(plain.catalog, Catalog::legacy(Some("u1"), &[LookupKey::parse("FMMailPro").unwrap()]));
        let no_plan = settings(&Env::from_pairs([("MY_DOMAIN", "https://a.example")])).unwrap();
        assert_eq!(require_usage_plans(&no_plan.catalog), Err(ConfigError::Missing("USAGE_PLAN_ID")));
        // malformed, and both ways of naming lookup keys at once
        let bad =
            settings(&Env::from_pairs([("MY_DOMAIN", "https://a.example"), ("PAYKEY_CATALOG", r#"{"tiers": []}"#)]));
        assert!(matches!(bad, Err(ConfigError::Malformed { name: "PAYKEY_CATALOG", .. })), "{bad:?}");
        let both = settings(&Env::from_pairs([
            ("MY_DOMAIN", "https://a.example"),
            ("PAYKEY_CATALOG", json),
            ("ALLOWED_LOOKUP_KEYS", "FMMailPro"),
        ]));
        assert!(matches!(both, Err(ConfigError::Malformed { name: "PAYKEY_CATALOG", .. })), "{both:?}");
    }

    #[test]
    fn rotation_limits_are_read_and_checked() {
        let base = [("MY_DOMAIN", "https://a.example")];
        let d = settings(&Env::from_pairs(base)).unwrap();
        assert_eq!((d.rotation_max_grace.as_secs(), d.rotations_per_day), (86_400, 3));
        let s = settings(&Env::from_pairs([
            ("MY_DOMAIN", "https://a.example"),
            ("ROTATION_MAX_GRACE_SECONDS", "600"),
            ("ROTATIONS_PER_DAY", "5"),
        ]))
        .unwrap();
        assert_eq!((s.rotation_max_grace.as_secs(), s.rotations_per_day), (600, 5));
        for bad in ["0", "-1", "many"] {
            let e = settings(&Env::from_pairs([("MY_DOMAIN", "https://a.example"), ("ROTATIONS_PER_DAY", bad)]));
            assert!(matches!(e, Err(ConfigError::Malformed { name: "ROTATIONS_PER_DAY", .. })), "{bad}");
        }
        let idle =
            |v: &str| settings(&Env::from_pairs([("MY_DOMAIN", "https://a.example"), ("FREE_KEY_IDLE_DAYS", v)]));
        assert_eq!(idle("0").unwrap().free_key_idle_days, None, "0 is off");
        assert_eq!(idle("30").unwrap().free_key_idle_days, Some(30));
        assert_eq!(idle("60").unwrap().free_key_idle_days, Some(60));
        for bad in ["61", "-1", "x", "1.5"] {
            assert!(matches!(idle(bad), Err(ConfigError::Malformed { name: "FREE_KEY_IDLE_DAYS", .. })), "{bad}");
        }
    }

    #[test]
    fn webhook_secrets_are_one_or_several_whsec_values() {
        let one = check_webhook_secrets(Secret::new("whsec_a")).unwrap();
        assert_eq!(one.iter().map(|s| s.expose()).collect::<Vec<_>>(), ["whsec_a"]);
        let two = check_webhook_secrets(Secret::new("whsec_new, whsec_old")).unwrap();
        assert_eq!(two.iter().map(|s| s.expose()).collect::<Vec<_>>(), ["whsec_new", "whsec_old"]);
        for bad in ["sk_test_x", "whsec_a,", "whsec_a,sk_live_b", ""] {
            let e = check_webhook_secrets(Secret::new(bad)).unwrap_err();
            assert!(matches!(e, ConfigError::Malformed { name: "STRIPE_WEBHOOK_SECRET", .. }), "{bad:?}: {e:?}");
            assert!(!e.to_string().contains("sk_"), "the value is not echoed: {e}");
        }
    }

    #[test]
    fn a_missing_variable_is_named() {
        let env = Env::from_pairs([("MY_DOMAIN", "https://app.example.com")]);
        assert_eq!(Tables::from_env(&env).unwrap_err(), ConfigError::Missing("DYNAMODB_STRIPE_TABLE"));
        assert_eq!(StripeConfig::from_env(&env).unwrap_err(), ConfigError::Missing("STRIPE_API_KEY"));
        assert_eq!(settings(&Env::default()).unwrap_err(), ConfigError::Missing("MY_DOMAIN"));
    }

    #[test]
    fn malformed_values_are_named_and_secrets_not_echoed() {
        let env = Env::from_pairs([("STRIPE_API_KEY", "pk_live_oops_public_key")]);
        let err = StripeConfig::from_env(&env).unwrap_err().to_string();
        assert!(err.contains("STRIPE_API_KEY"), "{err}");
        assert!(!err.contains("pk_live_oops"), "{err}");
        let env = Env::from_pairs([("MY_DOMAIN", "app.example.com")]);
        assert!(settings(&env).unwrap_err().to_string().contains("MY_DOMAIN"));
        let env = Env::from_pairs([("MY_DOMAIN", "https://a.example"), ("ALLOWED_LOOKUP_KEYS", "ok, bad key")]);
        assert!(settings(&env).unwrap_err().to_string().contains("ALLOWED_LOOKUP_KEYS"));
        let env = Env::from_pairs([("STRIPE_API_KEY", "sk_test_x"), ("PRICE_CACHE_SECONDS", "soon")]);
        assert!(StripeConfig::from_env(&env).unwrap_err().to_string().contains("PRICE_CACHE_SECONDS"));
    }

    #[test]
    fn the_api_url_is_built_from_the_rest_api_id() {
        let env = Env::from_pairs([
            ("MY_DOMAIN", "https://app.example.com/"),
            ("REST_API_ID", "abc123"),
            ("AWS_REGION", "ap-northeast-1"),
            ("STAGE_NAME", "v1"),
        ]);
        let s = settings(&env).unwrap();
        assert_eq!(s.app_url, "https://app.example.com");
        assert_eq!(s.api_url, "https://abc123.execute-api.ap-northeast-1.amazonaws.com/v1");
        let no_api = settings(&Env::from_pairs([("MY_DOMAIN", "https://a.example")])).unwrap();
        assert!(no_api.allowed_origins.is_empty());
        assert_eq!(no_api.api_url, "", "derived from each request instead");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("sk_test_very_secret");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        let cfg = StripeConfig::from_env(&Env::from_pairs([("STRIPE_API_KEY", "sk_test_very_secret")])).unwrap();
        assert!(!format!("{cfg:?}").contains("very_secret"));
    }

    #[test]
    fn allowed_origins_are_origins_lowercased_without_duplicates_and_refused_with_a_path() {
        let env = |v| Env::from_pairs([("MY_DOMAIN", "https://app.example.com"), ("ALLOWED_ORIGINS", v)]);
        let s = settings(&env(" https://Admin.Example.com, http://localhost:5173,,https://admin.example.com:443 "))
            .unwrap();
        assert_eq!(s.allowed_origins, ["https://admin.example.com", "http://localhost:5173"]);
        let upper = Env::from_pairs([("MY_DOMAIN", "https://App.Example.com:443")]);
        assert_eq!(settings(&upper).unwrap().app_url, "https://app.example.com", "as browsers send Origin");
        assert_eq!(normalise_origin("http://Local:8080/x/Y"), "http://local:8080/x/Y");
        assert!(settings(&env("")).unwrap().allowed_origins.is_empty());
        for bad in ["https://a.example/app", "a.example", "https://", "*", "https://a.example/", "ftp://a.example"] {
            let e = settings(&env(bad)).unwrap_err().to_string();
            assert!(e.contains("ALLOWED_ORIGINS") && e.contains("no path"), "{bad}: {e}");
        }
        let many: Vec<String> = (0..=MAX_ALLOWED_ORIGINS).map(|i| format!("https://o{i}.example")).collect();
        let e = settings(&env(&many.join(","))).unwrap_err().to_string();
        assert!(e.contains("at most 20"), "{e}");
    }
}
