//! The AWS resources paykey's functions need, created when missing (found by name when they
//! exist): the sessions and API keys tables (keys and index as template.yaml declares them),
//! a user pool with the two custom attributes and an app client, and for each catalog tier
//! with keys a usage plan on one REST API stage. For moto_server, LocalStack, or an account
//! where the SAM stack is not deployed; the SAM stack creates the same things itself.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use paykey::domain::Catalog;
use serde_json::json;

/// What was created or found.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub sessions_table: String,
    pub api_keys_table: String,
    pub user_pool_id: String,
    pub client_id: String,
    pub rest_api_id: String,
    /// `catalog` with each tier that has keys on the usage plan made for it (`PAYKEY_CATALOG`).
    pub catalog_json: String,
}

/// Finds, and with `create` creates when missing, the resources named `{prefix}-sessions`,
/// `{prefix}-api-keys`, `{prefix}` (pool, client, REST API) and `{prefix}-{tier}` (usage
/// plans). Without `create`, a missing one is an error naming it.
pub async fn provision(config: &SdkConfig, prefix: &str, catalog: &Catalog) -> Result<Provisioned, String> {
    resources(config, prefix, catalog, true).await
}

pub async fn resources(
    config: &SdkConfig,
    prefix: &str,
    catalog: &Catalog,
    create: bool,
) -> Result<Provisioned, String> {
    let missing = |what: String| format!("{what} does not exist; run with PAYKEY_AWS_PROVISION=1 to create it");
    let ddb = aws_sdk_dynamodb::Client::new(config);
    let sessions_table = format!("{prefix}-sessions");
    let api_keys_table = format!("{prefix}-api-keys");
    for (name, pk) in [(&sessions_table, "SessionID"), (&api_keys_table, "UserID")] {
        if ddb.describe_table().table_name(name.as_str()).send().await.is_ok() {
            continue;
        }
        if !create {
            return Err(missing(format!("the DynamoDB table {name}")));
        }
        let def =
            |n: &str| AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build();
        let hash = |n: &str| KeySchemaElement::builder().attribute_name(n).key_type(KeyType::Hash).build();
        let mut req = ddb
            .create_table()
            .table_name(name.as_str())
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(def(pk).map_err(|e| e.to_string())?)
            .key_schema(hash(pk).map_err(|e| e.to_string())?);
        if pk == "UserID" {
            let index = GlobalSecondaryIndex::builder()
                .index_name(paykey::adapters::aws::CUSTOMER_INDEX)
                .key_schema(hash("StripeCustomerId").map_err(|e| e.to_string())?)
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .map_err(|e| e.to_string())?;
            req = req
                .attribute_definitions(def("StripeCustomerId").map_err(|e| e.to_string())?)
                .global_secondary_indexes(index);
        }
        req.send().await.map_err(|e| format!("CreateTable {name}: {}", aws_error(&e)))?;
    }

    let idp = aws_sdk_cognitoidentityprovider::Client::new(config);
    // Every page (60 pools each): an account with more pools must still find its own.
    let mut token: Option<String> = None;
    let existing = loop {
        let page = idp
            .list_user_pools()
            .max_results(60)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| format!("ListUserPools: {}", aws_error(&e)))?;
        let found =
            page.user_pools().iter().find(|p| p.name() == Some(prefix)).and_then(|p| p.id().map(str::to_string));
        match page.next_token() {
            Some(t) if found.is_none() && !t.is_empty() => token = Some(t.to_string()),
            _ => break found,
        }
    };
    let user_pool_id = match existing {
        Some(id) => id,
        None if !create => return Err(missing(format!("the user pool {prefix}"))),
        None => {
            use aws_sdk_cognitoidentityprovider::types::{
                AttributeDataType, SchemaAttributeType, StringAttributeConstraintsType,
            };
            let attr = |n: &str| {
                SchemaAttributeType::builder()
                    .name(n)
                    .attribute_data_type(AttributeDataType::String)
                    .mutable(true)
                    .string_attribute_constraints(
                        StringAttributeConstraintsType::builder()
                            .max_length(if n == "plan_type" { "16" } else { "64" })
                            .build(),
                    )
                    .build()
            };
            let out = idp
                .create_user_pool()
                .pool_name(prefix)
                .schema(attr("plan_type"))
                .schema(attr("stripe_customer_id"))
                .send()
                .await
                .map_err(|e| format!("CreateUserPool: {}", aws_error(&e)))?;
            out.user_pool().and_then(|p| p.id()).ok_or("CreateUserPool answered no id")?.to_string()
        }
    };
    let mut token: Option<String> = None;
    let existing = loop {
        let page = idp
            .list_user_pool_clients()
            .user_pool_id(&user_pool_id)
            .max_results(60)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| format!("ListUserPoolClients: {}", aws_error(&e)))?;
        let found = page
            .user_pool_clients()
            .iter()
            .find(|c| c.client_name() == Some(prefix))
            .and_then(|c| c.client_id().map(str::to_string));
        match page.next_token() {
            Some(t) if found.is_none() && !t.is_empty() => token = Some(t.to_string()),
            _ => break found,
        }
    };
    let client_id = match existing {
        Some(id) => id,
        None if !create => return Err(missing(format!("the app client {prefix}"))),
        None => {
            use aws_sdk_cognitoidentityprovider::types::ExplicitAuthFlowsType as F;
            let out = idp
                .create_user_pool_client()
                .user_pool_id(&user_pool_id)
                .client_name(prefix)
                .explicit_auth_flows(F::AllowUserSrpAuth)
                .explicit_auth_flows(F::AllowAdminUserPasswordAuth)
                .explicit_auth_flows(F::AllowRefreshTokenAuth)
                .read_attributes("email")
                .read_attributes("custom:plan_type")
                .read_attributes("custom:stripe_customer_id")
                .write_attributes("email")
                .send()
                .await
                .map_err(|e| format!("CreateUserPoolClient: {}", aws_error(&e)))?;
            out.user_pool_client().and_then(|c| c.client_id()).ok_or("CreateUserPoolClient answered no id")?.to_string()
        }
    };

    let apigw = aws_sdk_apigateway::Client::new(config);
    let apis = apigw.get_rest_apis().limit(500).send().await.map_err(|e| format!("GetRestApis: {}", aws_error(&e)))?;
    let existing = apis.items().iter().find(|a| a.name() == Some(prefix)).and_then(|a| a.id().map(str::to_string));
    let rest_api_id = match existing {
        Some(id) => id,
        None if !create => return Err(missing(format!("the REST API {prefix}"))),
        None => apigw
            .create_rest_api()
            .name(prefix)
            .send()
            .await
            .map_err(|e| format!("CreateRestApi: {}", aws_error(&e)))?
            .id()
            .ok_or("CreateRestApi answered no id")?
            .to_string(),
    };
    let plans =
        apigw.get_usage_plans().limit(500).send().await.map_err(|e| format!("GetUsagePlans: {}", aws_error(&e)))?;
    let mut tiers = Vec::new();
    for t in catalog.tiers() {
        let mut tier = json!({"name": t.name.to_string(), "trial_days": t.trial_days});
        if let Some(k) = &t.lookup_key {
            tier["lookup_key"] = json!(k.to_string());
        }
        if let Some(q) = t.quota {
            tier["quota"] = serde_json::to_value(q).map_err(|e| e.to_string())?;
        }
        if let Some(th) = t.throttle {
            tier["throttle"] = serde_json::to_value(th).map_err(|e| e.to_string())?;
        }
        if t.usage_plan_id.is_some() {
            let name = format!("{prefix}-{}", t.name);
            let found =
                plans.items().iter().find(|p| p.name() == Some(name.as_str())).and_then(|p| p.id().map(str::to_string));
            let id = match found {
                Some(id) => id,
                None if !create => return Err(missing(format!("the usage plan {name}"))),
                None => {
                    use aws_sdk_apigateway::types::{ApiStage, QuotaPeriodType, QuotaSettings, ThrottleSettings};
                    let mut req = apigw
                        .create_usage_plan()
                        .name(&name)
                        .api_stages(ApiStage::builder().api_id(&rest_api_id).stage("prod").build());
                    if let Some(q) = t.quota {
                        let period = QuotaPeriodType::from(
                            serde_json::to_value(q.period)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default()
                                .as_str(),
                        );
                        req = req.quota(QuotaSettings::builder().limit(q.limit as i32).period(period).build());
                    }
                    if let Some(th) = t.throttle {
                        req = req.throttle(
                            ThrottleSettings::builder().rate_limit(th.rate).burst_limit(th.burst as i32).build(),
                        );
                    }
                    req.send()
                        .await
                        .map_err(|e| format!("CreateUsagePlan {name}: {}", aws_error(&e)))?
                        .id()
                        .ok_or("CreateUsagePlan answered no id")?
                        .to_string()
                }
            };
            tier["usage_plan_id"] = json!(id);
        }
        tiers.push(tier);
    }
    let catalog_json = json!({ "tiers": tiers }).to_string();
    Ok(Provisioned { sessions_table, api_keys_table, user_pool_id, client_id, rest_api_id, catalog_json })
}

fn aws_error<E: std::error::Error + 'static>(e: &E) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
