//! The AWS side of a stack besides the product API: the Stripe secrets in SSM (validated as
//! the functions validate them at cold start), the user pool's custom attributes and the app
//! client's rights on them, and the account's API key count against API Gateway's ceiling.

use paykey::domain::Secret;

use super::Check;

/// API Gateway's quota of API keys per account and Region.
pub const KEY_CEILING: usize = paykey::flows::API_KEY_QUOTA;

/// The two attributes paykey writes (and only paykey may).
pub const PAYKEY_ATTRIBUTES: [&str; 2] = ["custom:plan_type", "custom:stripe_customer_id"];

/// The Stripe secret key as the functions accept it; `Ok(live)`.
pub fn check_secret_key(parameter: &str, read: Result<Secret, String>) -> (Check, Option<(Secret, bool)>) {
    let title = format!("the Stripe secret key is stored in SSM parameter {parameter}");
    let fix = format!("aws ssm put-parameter --overwrite --type SecureString --name {parameter} --value 'sk_live_…' (then deploy with a new SecretsVersion)");
    match read {
        Err(e) => (Check::fail(title, e, fix), None),
        Ok(secret) => {
            let env = paykey::config::Env::default();
            match paykey::config::StripeConfig::with_secret(&env, secret) {
                Err(e) => (Check::fail(title, e.to_string(), fix), None),
                Ok(cfg) => {
                    let key = cfg.secret_key.expose();
                    let live = key.starts_with("sk_live_") || key.starts_with("rk_live_");
                    (Check::pass(title), Some((cfg.secret_key, live)))
                }
            }
        }
    }
}

/// The webhook signing secret(s) as the webhook function accepts them.
pub fn check_webhook_secret(parameter: &str, read: Result<Secret, String>) -> Check {
    let title = format!("the webhook signing secret is stored in SSM parameter {parameter}");
    let fix = format!("aws ssm put-parameter --overwrite --type SecureString --name {parameter} --value 'whsec_…' (the endpoint's signing secret; then deploy with a new SecretsVersion)");
    match read.and_then(|s| paykey::config::check_webhook_secrets(s).map_err(|e| e.to_string())) {
        Ok(_) => Check::pass(title),
        Err(e) => Check::fail(title, e, fix),
    }
}

/// The pool's schema and the app client's read/write attributes.
pub fn check_pool(pool: &str, schema: &[String], client: &str, read: &[String], write: &[String]) -> Vec<Check> {
    let mut out = Vec::new();
    let missing: Vec<&str> = PAYKEY_ATTRIBUTES.iter().copied().filter(|a| !schema.iter().any(|s| s == a)).collect();
    if missing.is_empty() {
        out.push(Check::pass(format!("user pool {pool} has {}", PAYKEY_ATTRIBUTES.join(" and "))));
    } else {
        out.push(Check::fail(
            format!("user pool {pool} has {}", PAYKEY_ATTRIBUTES.join(" and ")),
            format!("missing: {}", missing.join(", ")),
            "the stack's pool has them: is UserPoolId this stack's pool? (custom attributes cannot be removed, so a pool without them was made elsewhere)",
        ));
    }
    let writable: Vec<&str> = PAYKEY_ATTRIBUTES.iter().copied().filter(|a| write.iter().any(|w| w == a)).collect();
    if writable.is_empty() && !write.is_empty() {
        out.push(Check::pass(format!("app client {client} cannot write them")));
    } else {
        out.push(Check::fail(
            format!("app client {client} cannot write them"),
            if write.is_empty() {
                "the client has no WriteAttributes list, which lets it write every attribute: a user could set their own plan".to_string()
            } else {
                format!("it may write {}: a user could set their own plan or customer", writable.join(", "))
            },
            format!("aws cognito-idp update-user-pool-client --user-pool-id {pool} --client-id {client} --write-attributes email … (everything but the two), or redeploy the stack (its client lists them)"),
        ));
    }
    let unreadable: Vec<&str> = PAYKEY_ATTRIBUTES.iter().copied().filter(|a| !read.iter().any(|r| r == a)).collect();
    if !read.is_empty() && !unreadable.is_empty() {
        out.push(Check::warn(
            format!("app client {client} can read them"),
            format!("it cannot read {}: the front end shows no plan from the token", unreadable.join(", ")),
            "redeploy the stack (its client reads them)",
        ));
    }
    out
}

/// The account's API keys against the ceiling: a warning from 80 %, a failure from 95 % (new
/// keys fail at the ceiling: checkouts are paid and then not fulfilled).
pub fn check_key_count(count: usize, ceiling: usize) -> Check {
    let title = format!("API keys in this account and Region: {count} of {ceiling}");
    let percent = count * 100 / ceiling.max(1);
    let fix = "API Gateway does not raise this quota: delete unused keys (paykey-resync --keys counts paykey's per tier; keys of other APIs count too), or sell from another account or Region";
    if percent >= 95 {
        Check::fail(title, format!("{percent} % used: new keys fail at the ceiling"), fix)
    } else if percent >= 80 {
        Check::warn(title, format!("{percent} % used"), fix)
    } else {
        Check::pass(title)
    }
}

/// Reads an SSM SecureString parameter (decrypted); errors name the parameter, never a value.
pub async fn read_parameter(config: &aws_config::SdkConfig, name: &str) -> Result<Secret, String> {
    paykey::adapters::aws::secure_parameter(config, name).await.map_err(|e| e.to_string())
}

/// (schema attribute names, client read attributes, client write attributes).
pub async fn read_pool(
    config: &aws_config::SdkConfig,
    pool: &str,
    client: &str,
) -> Result<(Vec<String>, Vec<String>, Vec<String>), String> {
    use aws_sdk_cognitoidentityprovider::error::DisplayErrorContext;
    let idp = aws_sdk_cognitoidentityprovider::Client::new(config);
    let p = idp
        .describe_user_pool()
        .user_pool_id(pool)
        .send()
        .await
        .map_err(|e| format!("Cognito DescribeUserPool {pool}: {}", DisplayErrorContext(&e)))?;
    let schema = p
        .user_pool()
        .map(|u| u.schema_attributes().iter().filter_map(|a| a.name()).map(normalise).collect())
        .unwrap_or_default();
    let c = idp
        .describe_user_pool_client()
        .user_pool_id(pool)
        .client_id(client)
        .send()
        .await
        .map_err(|e| format!("Cognito DescribeUserPoolClient {client}: {}", DisplayErrorContext(&e)))?;
    let (read, write) =
        c.user_pool_client().map(|u| (u.read_attributes().to_vec(), u.write_attributes().to_vec())).unwrap_or_default();
    Ok((schema, read, write))
}

/// DescribeUserPool names a custom attribute `custom:x`; some tools print `x` (CreateUserPool's
/// input form, as moto echoes it): both read as `custom:x` when it is one of paykey's.
fn normalise(name: &str) -> String {
    match PAYKEY_ATTRIBUTES.iter().find(|a| a.strip_prefix("custom:") == Some(name)) {
        Some(a) => a.to_string(),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn key_count_thresholds() {
        assert_eq!(check_key_count(7_999, KEY_CEILING).status, Status::Pass);
        assert_eq!(check_key_count(8_000, KEY_CEILING).status, Status::Warn);
        assert_eq!(check_key_count(9_499, KEY_CEILING).status, Status::Warn);
        assert_eq!(check_key_count(9_500, KEY_CEILING).status, Status::Fail);
    }

    #[test]
    fn secrets_are_judged_as_the_functions_judge_them_and_never_printed() {
        let (c, k) = check_secret_key("/p/k", Ok(Secret::new("sk_live_abc")));
        assert_eq!(c.status, Status::Pass);
        assert!(k.unwrap().1, "live");
        let (c, k) = check_secret_key("/p/k", Ok(Secret::new("pk_live_abc")));
        assert_eq!(c.status, Status::Fail);
        assert!(k.is_none() && !c.to_string().contains("pk_live_abc"), "{c}");
        let c = check_webhook_secret("/p/w", Ok(Secret::new("whsec_a,whsec_b")));
        assert_eq!(c.status, Status::Pass);
        let c = check_webhook_secret("/p/w", Ok(Secret::new("sk_test_leaked")));
        assert_eq!(c.status, Status::Fail);
        assert!(!c.to_string().contains("sk_test_leaked"), "{c}");
    }

    #[test]
    fn a_client_that_may_write_the_plan_fails_and_one_without_a_write_list_too() {
        let schema: Vec<String> = PAYKEY_ATTRIBUTES.iter().map(|s| s.to_string()).collect();
        let read = schema.clone();
        let ok = check_pool("p", &schema, "c", &read, &["email".into()]);
        assert!(ok.iter().all(|c| c.status == Status::Pass), "{ok:?}");
        let bad = check_pool("p", &schema, "c", &read, &["email".into(), "custom:plan_type".into()]);
        assert_eq!(bad.iter().filter(|c| c.status == Status::Fail).count(), 1);
        let none = check_pool("p", &schema, "c", &read, &[]);
        assert_eq!(none.iter().filter(|c| c.status == Status::Fail).count(), 1);
    }
}
