//! Resources on moto_server for the AWS adapter tests.

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use paykey::domain::UserName;

pub struct Moto {
    pub config: aws_config::SdkConfig,
}

impl Moto {
    /// The moto_server named by `PAYKEY_MOTO_URL`. `None` (test skipped, said on stderr) only
    /// when `PAYKEY_SKIP_MOTO=1`; otherwise a missing URL fails the test.
    pub async fn connect() -> Option<Self> {
        let url = match std::env::var("PAYKEY_MOTO_URL") {
            Ok(u) if !u.is_empty() => u,
            _ if std::env::var("PAYKEY_SKIP_MOTO").as_deref() == Ok("1") => {
                eprintln!("PAYKEY_SKIP_MOTO=1: skipping a moto test");
                return None;
            }
            _ => panic!(
                "PAYKEY_MOTO_URL is not set: run the README's test command (scripts/test), which starts moto_server"
            ),
        };
        // The functions' HTTP client (adapters::https), so the AWS contract suites on moto
        // run over the same stack as the deployed functions.
        let http = paykey::adapters::https::AwsHttpClient::new(&Default::default()).unwrap().shared();
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .load()
            .await;
        Some(Self { config })
    }

    fn unique(prefix: &str) -> String {
        format!("{prefix}{}", uuid::Uuid::new_v4().simple())
    }

    /// (sessions table, api keys table), named as in the SAM template.
    pub async fn create_tables(&self) -> (String, String) {
        let ddb = aws_sdk_dynamodb::Client::new(&self.config);
        let def = |n: &str| {
            AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap()
        };
        let hash = |n: &str| KeySchemaElement::builder().attribute_name(n).key_type(KeyType::Hash).build().unwrap();
        let mut names = Vec::new();
        for (prefix, pk) in [("paykey-sessions-", "SessionID"), ("paykey-api-keys-", "UserID")] {
            let name = Self::unique(prefix);
            let mut req = ddb
                .create_table()
                .table_name(&name)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(def(pk))
                .key_schema(hash(pk));
            if pk == "UserID" {
                req = req.attribute_definitions(def("StripeCustomerId")).global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(paykey::adapters::aws::CUSTOMER_INDEX)
                        .key_schema(hash("StripeCustomerId"))
                        .projection(Projection::builder().projection_type(ProjectionType::All).build())
                        .build()
                        .unwrap(),
                );
            }
            req.send().await.expect("create table on moto");
            names.push(name);
        }
        (names.remove(0), names.remove(0))
    }

    /// A user pool with the two custom attributes.
    pub async fn create_user_pool(&self) -> String {
        use aws_sdk_cognitoidentityprovider::types::{AttributeDataType, SchemaAttributeType};
        let idp = aws_sdk_cognitoidentityprovider::Client::new(&self.config);
        let attr = |n: &str| {
            SchemaAttributeType::builder().name(n).attribute_data_type(AttributeDataType::String).mutable(true).build()
        };
        let out = idp
            .create_user_pool()
            .pool_name(Self::unique("paykey-"))
            .schema(attr("plan_type"))
            .schema(attr("stripe_customer_id"))
            .send()
            .await
            .expect("create user pool on moto");
        out.user_pool().and_then(|p| p.id()).expect("pool id").to_string()
    }

    pub async fn create_user(&self, pool: &str, user: &UserName) {
        let idp = aws_sdk_cognitoidentityprovider::Client::new(&self.config);
        idp.admin_create_user().user_pool_id(pool).username(user.as_str()).send().await.expect("create user on moto");
    }

    /// A REST API with a stage and a PRO usage plan bound to it; returns the plan id.
    pub async fn create_usage_plan(&self) -> String {
        self.create_usage_plans(1).await.remove(0)
    }

    /// `n` usage plans on one API stage (the catalog's tiers).
    pub async fn create_usage_plans(&self, n: usize) -> Vec<String> {
        use aws_sdk_apigateway::types::{ApiStage, QuotaPeriodType, QuotaSettings};
        let apigw = aws_sdk_apigateway::Client::new(&self.config);
        let api = apigw.create_rest_api().name(Self::unique("paykey-product-")).send().await.expect("create rest api");
        let api_id = api.id().expect("api id").to_string();
        let mut plans = Vec::new();
        for _ in 0..n {
            let plan = apigw
                .create_usage_plan()
                .name(Self::unique("paykey-tier-"))
                .quota(QuotaSettings::builder().limit(100_000).period(QuotaPeriodType::Month).build())
                .api_stages(ApiStage::builder().api_id(&api_id).stage("prod").build())
                .send()
                .await
                .expect("create usage plan");
            plans.push(plan.id().expect("plan id").to_string());
        }
        plans
    }
}
