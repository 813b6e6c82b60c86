//! The local stack on the production AWS adapters (`PAYKEY_BACKEND=aws`): DynamoDB, Cognito and
//! API Gateway through the same adapters the Lambdas use, at `AWS_ENDPOINT_URL` (moto_server,
//! LocalStack) or in the account the AWS credentials name. The resources are found by name
//! (`PAYKEY_AWS_PREFIX`, see [`crate::provision`]) and created when `PAYKEY_AWS_PROVISION=1`.
//! Sign-up and sign-in go to the user pool (AdminCreateUser, AdminSetUserPassword,
//! AdminInitiateAuth); the API Gateway emulation verifies the pool's ID tokens against its JWKS.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_cognitoidentityprovider::types::{AttributeType, AuthFlowType, MessageActionType};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use paykey::adapters::aws::{ApiGatewayKeys, CognitoUsers, DynamoStore};
use paykey::adapters::patient::Patient;
use paykey::config::Tables;
use paykey::domain::Catalog;
use serde_json::Value;

use crate::provision::{self, Provisioned};

/// Where and what.
#[derive(Debug, Clone)]
pub struct AwsOptions {
    /// `AWS_ENDPOINT_URL`; `None`: AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// Resource names' prefix (`PAYKEY_AWS_PREFIX`, default `paykey-local`).
    pub prefix: String,
    /// Create what is missing (`PAYKEY_AWS_PROVISION=1`).
    pub provision: bool,
}

/// The stores' side of the stack when it runs on AWS.
pub struct AwsStack {
    pub sdk: SdkConfig,
    pub resources: Provisioned,
    pub catalog: Catalog,
    jwks: Value,
    issuer: String,
}

impl AwsStack {
    pub async fn connect(o: &AwsOptions, catalog: &Catalog) -> Result<Self, String> {
        let http = paykey::adapters::https::AwsHttpClient::new(&Default::default()).map_err(|e| e.to_string())?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.shared())
            .region(aws_config::Region::new(o.region.clone()));
        if let Some(e) = &o.endpoint {
            loader = loader.endpoint_url(e);
        }
        let sdk = loader.load().await;
        let resources = provision::resources(&sdk, &o.prefix, catalog, o.provision).await?;
        let catalog = Catalog::parse(&resources.catalog_json).map_err(|e| e.to_string())?;
        // moto serves the pool's keys under its endpoint; AWS under cognito-idp.<region>
        let idp = format!("https://cognito-idp.{}.amazonaws.com", o.region);
        let jwks_url = format!(
            "{}/{}/.well-known/jwks.json",
            o.endpoint.as_deref().unwrap_or(&idp).trim_end_matches('/'),
            resources.user_pool_id
        );
        let jwks = fetch_json(&jwks_url).await.map_err(|e| format!("the user pool's JWKS ({jwks_url}): {e}"))?;
        Ok(Self { sdk, issuer: format!("{idp}/{}", resources.user_pool_id), resources, catalog, jwks })
    }

    pub fn tables(&self) -> Tables {
        Tables { sessions: self.resources.sessions_table.clone(), api_keys: self.resources.api_keys_table.clone() }
    }

    pub fn store(&self) -> DynamoStore {
        DynamoStore::new(&self.sdk, self.tables())
    }

    pub fn keys(&self) -> Patient<ApiGatewayKeys> {
        Patient::new(ApiGatewayKeys::new(&self.sdk))
    }

    pub fn users(&self) -> CognitoUsers {
        CognitoUsers::new(&self.sdk, self.resources.user_pool_id.clone())
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<serde_json::Map<String, Value>, crate::cognito::TokenError> {
        crate::cognito::verify_id_token(token, &self.jwks, &self.resources.client_id, &self.issuer, now)
    }

    fn idp(&self) -> aws_sdk_cognitoidentityprovider::Client {
        aws_sdk_cognitoidentityprovider::Client::new(&self.sdk)
    }

    /// A confirmed user with a permanent password. Errors are Cognito's (type, message).
    pub async fn sign_up(&self, username: &str, password: &str, email: Option<&str>) -> Result<(), (String, String)> {
        let pool = &self.resources.user_pool_id;
        let mut req = self
            .idp()
            .admin_create_user()
            .user_pool_id(pool)
            .username(username)
            .message_action(MessageActionType::Suppress);
        if let Some(e) = email.filter(|e| !e.is_empty()) {
            req = req.user_attributes(AttributeType::builder().name("email").value(e).build().map_err(cognito_err)?);
        }
        req.send().await.map_err(sdk_err)?;
        self.idp()
            .admin_set_user_password()
            .user_pool_id(pool)
            .username(username)
            .password(password)
            .permanent(true)
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(())
    }

    /// The user's ID and refresh tokens.
    pub async fn sign_in(&self, username: &str, password: &str) -> Result<PoolTokens, (String, String)> {
        let params = [("USERNAME", username), ("PASSWORD", password)];
        self.initiate_auth(AuthFlowType::AdminUserPasswordAuth, &params).await
    }

    /// A new ID token for a refresh token (`REFRESH_TOKEN_AUTH`; Cognito answers no new refresh
    /// token).
    pub async fn refresh(&self, refresh_token: &str) -> Result<(String, i32), (String, String)> {
        let t = self.initiate_auth(AuthFlowType::RefreshTokenAuth, &[("REFRESH_TOKEN", refresh_token)]).await?;
        Ok((t.id_token, t.expires_in))
    }

    /// AdminInitiateAuth with the app client; the tokens it answered.
    async fn initiate_auth(&self, flow: AuthFlowType, params: &[(&str, &str)]) -> Result<PoolTokens, (String, String)> {
        let mut req = self
            .idp()
            .admin_initiate_auth()
            .user_pool_id(&self.resources.user_pool_id)
            .client_id(&self.resources.client_id)
            .auth_flow(flow);
        for (k, v) in params {
            req = req.auth_parameters(*k, *v);
        }
        let out = req.send().await.map_err(sdk_err)?;
        let r = out.authentication_result().ok_or(("NotAuthorizedException".to_string(), "no tokens".to_string()))?;
        Ok(PoolTokens {
            id_token: r.id_token().unwrap_or_default().to_string(),
            refresh_token: r.refresh_token().unwrap_or_default().to_string(),
            expires_in: r.expires_in(),
        })
    }
}

/// What the user pool answered a sign-in.
pub struct PoolTokens {
    pub id_token: String,
    pub refresh_token: String,
    pub expires_in: i32,
}

fn cognito_err(e: impl std::fmt::Display) -> (String, String) {
    ("InvalidParameterException".into(), e.to_string())
}

fn sdk_err<E, R>(e: aws_sdk_cognitoidentityprovider::error::SdkError<E, R>) -> (String, String)
where
    E: aws_sdk_cognitoidentityprovider::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(se) => {
            (se.code().unwrap_or("InvalidParameterException").to_string(), se.message().unwrap_or_default().to_string())
        }
        None => ("InternalErrorException".into(), "the user pool could not be reached".into()),
    }
}

async fn fetch_json(url: &str) -> Result<Value, String> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}
