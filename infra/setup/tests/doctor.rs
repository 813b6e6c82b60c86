//! `paykey-doctor` (the built binary) against moto_server and the Stripe emulator: a correctly
//! wired stack passes, and each fault, introduced alone, gives exactly one ✗ (or its warning)
//! and the exit status.
//!
//! The "stack" is a CloudFormation stack created on moto with the parameters and outputs the
//! doctor reads, named as template.yaml names them (test_template.py asserts those names on the
//! transformed template); what they point at is made through the services' APIs: the product
//! API, its stage and the usage plans (API Gateway), the two secrets (SSM SecureString), the
//! user pool and app client (Cognito), and the Stripe catalog, portal configuration and webhook
//! endpoint (`paykey-setup`'s `run` on the emulator). moto returns no `apiSummary` for a
//! deployment, so the deployed-methods comparison is covered only by the doctor module's unit
//! tests; the key-count thresholds likewise (moto holds far fewer than 8,000 keys).

use std::net::SocketAddr;
use std::process::Command;

use aws_config::BehaviorVersion;
use aws_sdk_apigateway::config::{Credentials, Region};
use aws_sdk_apigateway::types::{ApiKeySourceType, ApiStage, IntegrationType};

const REGION: &str = "us-east-1";

fn moto_url() -> Option<String> {
    match std::env::var("PAYKEY_MOTO_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("PAYKEY_SKIP_MOTO").as_deref() == Ok("1") => {
            eprintln!("PAYKEY_SKIP_MOTO=1: skipping a moto test");
            None
        }
        _ => panic!("PAYKEY_MOTO_URL is not set: run the README's test command, which starts moto_server"),
    }
}

async fn config(url: &str, region: &str) -> aws_config::SdkConfig {
    let http = paykey::adapters::https::AwsHttpClient::new(&Default::default()).unwrap().shared();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region.to_string()))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await
}

/// What to get wrong, one at a time.
#[derive(Default, Clone, Copy)]
struct Fault {
    api_in_other_region: bool,
    stage_not_deployed: bool,
    method_without_key: bool,
    pro_plan_on_other_api: bool,
    free_plan_missing: bool,
    authorizer_key_source: bool,
    secret_key_missing: bool,
    webhook_secret_wrong: bool,
    webhook_disabled: bool,
    webhook_event_missing: bool,
    portal_unknown: bool,
    price_missing: bool,
    client_writes_plan: bool,
}

/// A stack on moto and the Stripe account it names (kept running for the doctor).
struct Deployed {
    stack: String,
    stripe: stripe_emulator::Running,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Builds the product API, its stage, the tiers' usage plans, the secrets, the user pool, the
/// Stripe catalog and the stack.
async fn deploy(url: &str, fault: Fault) -> Deployed {
    let home = config(url, REGION).await;
    let api_region = if fault.api_in_other_region { "eu-west-1" } else { REGION };
    let ag_api = aws_sdk_apigateway::Client::new(&config(url, api_region).await);
    let ag = aws_sdk_apigateway::Client::new(&home);
    let mut create = ag_api.create_rest_api().name(unique("product-"));
    if fault.authorizer_key_source {
        create = create.api_key_source(ApiKeySourceType::Authorizer);
    }
    let api = create.send().await.unwrap();
    let api_id = api.id().unwrap().to_string();
    let root = api.root_resource_id().unwrap().to_string();
    let mail = ag_api.create_resource().rest_api_id(&api_id).parent_id(&root).path_part("mail").send().await.unwrap();
    let rid = mail.id().unwrap();
    for (method, key) in [("GET", true), ("POST", !fault.method_without_key), ("OPTIONS", false)] {
        ag_api
            .put_method()
            .rest_api_id(&api_id)
            .resource_id(rid)
            .http_method(method)
            .authorization_type("NONE")
            .api_key_required(key)
            .send()
            .await
            .unwrap();
        ag_api
            .put_integration()
            .rest_api_id(&api_id)
            .resource_id(rid)
            .http_method(method)
            .r#type(IntegrationType::Mock)
            .send()
            .await
            .unwrap();
    }
    if !fault.stage_not_deployed {
        ag_api.create_deployment().rest_api_id(&api_id).stage_name("prod").send().await.unwrap();
    }
    let bound = |api: &str| ApiStage::builder().api_id(api).stage("prod").build();
    let pro_api = if fault.pro_plan_on_other_api {
        let other = ag.create_rest_api().name(unique("other-")).send().await.unwrap();
        other.id().unwrap().to_string()
    } else {
        api_id.clone()
    };
    let pro = ag.create_usage_plan().name(unique("pro-")).api_stages(bound(&pro_api)).send().await.unwrap();
    let free = if fault.free_plan_missing {
        "nosuchplan".to_string()
    } else {
        let p = ag.create_usage_plan().name(unique("free-")).api_stages(bound(&api_id)).send().await.unwrap();
        p.id().unwrap().to_string()
    };
    // Stripe: what paykey-setup makes, on an emulator of its own
    let stripe = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let client = stripe::ClientBuilder::new("sk_test_doctor").url(format!("{}/", stripe.base_url())).build().unwrap();
    let webhook_url = format!("https://{}.execute-api.{REGION}.amazonaws.com/prod/stripe/webhook", unique("api"));
    let catalog = paykey_setup::Catalog {
        webhook_url: Some(webhook_url.clone()),
        portal_return_url: Some("https://app.example.com/".into()),
        ..paykey_setup::Catalog::default()
    };
    let made = paykey_setup::run(&client, &catalog).await.unwrap();
    let endpoint = {
        let (_, hooks) = stripe.shared.call("GET", "/v1/webhook_endpoints", "");
        hooks["data"][0]["id"].as_str().unwrap().to_string()
    };
    if fault.webhook_disabled {
        stripe.shared.call("POST", &format!("/v1/webhook_endpoints/{endpoint}"), "disabled=true");
    }
    if fault.webhook_event_missing {
        stripe.shared.call(
            "POST",
            &format!("/v1/webhook_endpoints/{endpoint}"),
            "enabled_events[0]=checkout.session.completed",
        );
    }
    let portal = if fault.portal_unknown { "bpc_nosuchconfig".to_string() } else { made.portal_configuration.unwrap() };

    // the secrets
    let ssm = aws_sdk_ssm::Client::new(&home);
    let key_param = format!("/{}/stripe/secret-key", unique("paykey"));
    let hook_param = format!("/{}/stripe/webhook-secret", unique("paykey"));
    let put = |name: String, value: &str| {
        ssm.put_parameter().name(name).value(value).r#type(aws_sdk_ssm::types::ParameterType::SecureString).send()
    };
    if !fault.secret_key_missing {
        put(key_param.clone(), "sk_test_doctor").await.unwrap();
    }
    let hook_secret =
        if fault.webhook_secret_wrong { "sk_test_pasted_here" } else { made.webhook_secret.as_deref().unwrap() };
    put(hook_param.clone(), hook_secret).await.unwrap();

    // the user pool, as the template makes it
    let idp = aws_sdk_cognitoidentityprovider::Client::new(&home);
    use aws_sdk_cognitoidentityprovider::types::{AttributeDataType, SchemaAttributeType};
    let custom = |n: &str| {
        SchemaAttributeType::builder().name(n).attribute_data_type(AttributeDataType::String).mutable(true).build()
    };
    let pool = idp
        .create_user_pool()
        .pool_name(unique("users-"))
        .schema(custom("plan_type"))
        .schema(custom("stripe_customer_id"))
        .send()
        .await
        .unwrap();
    let pool_id = pool.user_pool().unwrap().id().unwrap().to_string();
    let mut write = vec!["email".to_string()];
    if fault.client_writes_plan {
        write.push("custom:plan_type".into());
    }
    let app = idp
        .create_user_pool_client()
        .user_pool_id(&pool_id)
        .client_name("app")
        .set_read_attributes(Some(vec!["email".into(), "custom:plan_type".into(), "custom:stripe_customer_id".into()]))
        .set_write_attributes(Some(write))
        .send()
        .await
        .unwrap();
    let client_id = app.user_pool_client().unwrap().client_id().unwrap().to_string();

    let params = [
        "ProductRestApiId",
        "ProductStageName",
        "Pro",
        "Free",
        "StripeSecretKeyParameter",
        "StripeWebhookSecretParameter",
        "PortalConfigurationId",
        "ProLookupKey",
        "BusinessLookupKey",
        "Webhook",
        "Pool",
        "Client",
    ];
    let template = serde_json::json!({
        "Parameters": params.iter().map(|p| (p.to_string(), serde_json::json!({"Type": "String"}))).collect::<serde_json::Map<_, _>>(),
        "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {
            "UsagePlanId": {"Value": {"Ref": "Pro"}},
            "FreeUsagePlanId": {"Value": {"Ref": "Free"}},
            "WebhookUrl": {"Value": {"Ref": "Webhook"}},
            "UserPoolId": {"Value": {"Ref": "Pool"}},
            "UserPoolClientId": {"Value": {"Ref": "Client"}}
        }
    });
    let cf = aws_sdk_cloudformation::Client::new(&home);
    let name = unique("paykey-");
    let p = |k: &str, v: &str| {
        aws_sdk_cloudformation::types::Parameter::builder().parameter_key(k).parameter_value(v).build()
    };
    cf.create_stack()
        .stack_name(&name)
        .template_body(template.to_string())
        .parameters(p("ProductRestApiId", &api_id))
        .parameters(p("ProductStageName", "prod"))
        .parameters(p("Pro", pro.id().unwrap()))
        .parameters(p("Free", &free))
        .parameters(p("StripeSecretKeyParameter", &key_param))
        .parameters(p("StripeWebhookSecretParameter", &hook_param))
        .parameters(p("PortalConfigurationId", &portal))
        .parameters(p("ProLookupKey", if fault.price_missing { "NoSuchLookupKey" } else { "FMMailPro" }))
        .parameters(p("BusinessLookupKey", ""))
        .parameters(p("Webhook", &webhook_url))
        .parameters(p("Pool", &pool_id))
        .parameters(p("Client", &client_id))
        .send()
        .await
        .unwrap();
    Deployed { stack: name, stripe }
}

async fn doctor(url: &str, d: &Deployed) -> (i32, String) {
    run_doctor(url, &d.stack, Some(&d.stripe)).await
}

/// Runs the binary off the test's runtime thread: the Stripe emulator it calls is served by
/// that runtime.
async fn run_doctor(url: &str, stack: &str, stripe: Option<&stripe_emulator::Running>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paykey-doctor"));
    if let Some(s) = stripe {
        cmd.env("STRIPE_API_BASE", format!("{}/", s.base_url()));
    }
    cmd.args(["--stack", stack])
        .env("AWS_ENDPOINT_URL", url)
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("$ paykey-doctor --stack {stack}   (exit {:?})\n{text}", out.status.code());
    (out.status.code().unwrap_or(-1), text)
}

fn marks(text: &str, mark: char) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with(mark)).collect()
}

#[tokio::test]
async fn a_correctly_wired_stack_passes_and_each_fault_alone_gives_its_failure() {
    let Some(url) = moto_url() else { return };
    let d = deploy(&url, Fault::default()).await;
    let (code, out) = doctor(&url, &d).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("sk_test_doctor") && !out.contains("whsec_"), "a secret in the output:\n{out}");
    assert!(marks(&out, '✗').is_empty(), "{out}");
    for ok in [
        "✓ the stack is deployed (CREATE_COMPLETE)",
        "✓ product API stage ",
        "✓ every method of the product API requires an API key (2 methods)",
        "✓ PRO usage plan ",
        "✓ FREE usage plan ",
        "✓ the Stripe secret key is stored in SSM parameter ",
        "✓ the webhook signing secret is stored in SSM parameter ",
        "✓ the Stripe key works (test mode)",
        "✓ it sends the 8 event types paykey acts on",
        "✓ billing portal configuration bpc_",
        "✓ tier price with lookup key FMMailPro exists",
        "✓ user pool ",
        "✓ app client ",
        "✓ API keys in this account and Region: ",
    ] {
        assert!(out.contains(ok), "missing {ok:?} in\n{out}");
    }
    // moto has no apiSummary: said, not hidden
    assert_eq!(marks(&out, '!').len(), 1, "{out}");
    assert!(out.contains("! the deployment stage prod serves (") && out.contains(") was not compared"), "{out}");

    // (fault, the one ✗ line's start, a line of its detail, a line of its fix)
    let cases: [(Fault, &str, &str, &str); 12] = [
        (
            Fault { api_in_other_region: true, ..Fault::default() },
            "✗ product API ",
            "no REST API ",
            "deploy paykey in the account and Region",
        ),
        (
            Fault { stage_not_deployed: true, ..Fault::default() },
            "✗ product API stage ",
            "has no stage \"prod\"",
            "create-deployment",
        ),
        (
            Fault { method_without_key: true, ..Fault::default() },
            "✗ every method of the product API requires an API key",
            "1 of 2 methods answer without a key",
            "--http-method POST --patch-operations op=replace,path=/apiKeyRequired,value=true",
        ),
        (
            Fault { pro_plan_on_other_api: true, ..Fault::default() },
            "✗ PRO usage plan ",
            "bound to ",
            "ProductStageName=prod",
        ),
        (
            Fault { free_plan_missing: true, ..Fault::default() },
            "✗ FREE usage plan nosuchplan",
            "no usage plan nosuchplan",
            "sam deploy",
        ),
        (
            Fault { secret_key_missing: true, ..Fault::default() },
            "✗ the Stripe secret key is stored in SSM parameter ",
            "ParameterNotFound",
            "aws ssm put-parameter --overwrite --type SecureString",
        ),
        (
            Fault { webhook_secret_wrong: true, ..Fault::default() },
            "✗ the webhook signing secret is stored",
            "expected whsec_",
            "--value 'whsec_…'",
        ),
        (
            Fault { webhook_disabled: true, ..Fault::default() },
            "✗ the webhook endpoint sending to https://",
            "disabled (Stripe disables",
            "--disabled=false",
        ),
        (
            Fault { webhook_event_missing: true, ..Fault::default() },
            "✗ webhook endpoint we_",
            "customer.subscription.deleted",
            "paykey-setup --webhook-url",
        ),
        (
            Fault { portal_unknown: true, ..Fault::default() },
            "✗ billing portal configuration bpc_nosuchconfig is active",
            "no portal configuration bpc_nosuchconfig among the account's 1",
            "PortalConfigurationId",
        ),
        (
            Fault { price_missing: true, ..Fault::default() },
            "✗ tier price with lookup key NoSuchLookupKey exists",
            "no active recurring price with lookup key \"NoSuchLookupKey\"",
            "paykey-setup --lookup-key",
        ),
        (
            Fault { client_writes_plan: true, ..Fault::default() },
            "✗ app client ",
            "it may write custom:plan_type",
            "update-user-pool-client",
        ),
    ];
    for (fault, line, detail, fix) in cases {
        let (code, out) = doctor(&url, &deploy(&url, fault).await).await;
        assert_eq!(code, 1, "{out}");
        let failed = marks(&out, '✗');
        assert_eq!(failed.len(), 1, "one fault, one ✗:\n{out}");
        assert!(failed[0].starts_with(line), "expected the ✗ line to start with {line:?}:\n{out}");
        // the detail and fix are the lines under the ✗ line, before the next check
        let block: String = out
            .lines()
            .skip_while(|l| !l.starts_with('✗'))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(block.contains(detail) && block.contains(fix), "expected {detail:?} and {fix:?} under the ✗ in\n{out}");
    }
}

#[tokio::test]
async fn a_key_source_other_than_the_header_is_a_warning_and_a_missing_stack_exit_2() {
    let Some(url) = moto_url() else { return };
    let (code, out) =
        doctor(&url, &deploy(&url, Fault { authorizer_key_source: true, ..Fault::default() }).await).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("! customers' keys are read from the x-api-key header") && out.contains("value=HEADER"),
        "{out}"
    );
    let (code, out) = run_doctor(&url, "no-such-stack", None).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot read stack \"no-such-stack\""), "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_paykey-doctor")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stack is required"));
}
