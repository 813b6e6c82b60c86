//! `paykey-doctor`: checks a deployed paykey stack against what it must be wired to, and says
//! how to fix what is not.
//!
//! - the product API — the REST API being sold (the stack's `ProductRestApiId` /
//!   `ProductStageName` parameters) must have that stage in the stack's account and Region,
//!   every method of it must require an API key (without that, a usage plan's quota and
//!   throttle limit nothing: a call without a key is let through), and each tier's usage plan
//!   (the stack's `*UsagePlanId` outputs) must be bound to that stage;
//! - the secrets ([`aws`]): both SSM parameters readable and valid as the functions check them;
//! - Stripe ([`stripe`]), with the stack's own key: its mode, the webhook endpoint (URL, enabled,
//!   events, API version), the portal configuration, each paid tier's price;
//! - the user pool: paykey's custom attributes, not writable by the app client;
//! - the account's API keys against API Gateway's 10,000.
//!
//! The checks are pure functions of what was read; the `read_*` functions read it through
//! CloudFormation, API Gateway, SSM, Cognito and Stripe (read-only calls).

pub mod aws;
pub mod stripe;

use std::collections::BTreeMap;
use std::fmt;

/// One check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// Worth a look; does not fail the run.
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    /// What must hold, e.g. "product API stage abc123/prod exists".
    pub title: String,
    /// What was found, when it is not obvious from the title.
    pub detail: Option<String>,
    /// How to fix a failure or a warning.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(title: impl Into<String>) -> Self {
        Self { status: Status::Pass, title: title.into(), detail: None, fix: None }
    }
    pub fn fail(title: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { status: Status::Fail, title: title.into(), detail: Some(detail.into()), fix: Some(fix.into()) }
    }
    pub fn warn(title: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { status: Status::Warn, title: title.into(), detail: Some(detail.into()), fix: Some(fix.into()) }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Pass => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        };
        write!(f, "{mark} {}", self.title)?;
        if let Some(d) = &self.detail {
            for line in d.lines() {
                write!(f, "\n    {line}")?;
            }
        }
        if let Some(x) = &self.fix {
            let mut lines = x.lines();
            if let Some(first) = lines.next() {
                write!(f, "\n    fix: {first}")?;
            }
            for line in lines {
                write!(f, "\n         {line}")?;
            }
        }
        Ok(())
    }
}

/// A deployed stack as CloudFormation describes it.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    pub name: String,
    pub status: String,
    pub parameters: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
}

/// The stack's own state: a failed or rolled-back stack runs what it ran before, or nothing.
pub fn check_stack_status(status: &str) -> Check {
    let title = format!("the stack is deployed ({status})");
    if status.ends_with("_FAILED") || status.ends_with("ROLLBACK_COMPLETE") || status.starts_with("DELETE") {
        Check::fail(
            title,
            "the last deploy did not complete: the stack runs the previous template, or nothing",
            "read the stack's events (aws cloudformation describe-stack-events --stack-name …), fix the cause and deploy again",
        )
    } else if status.ends_with("_IN_PROGRESS") {
        Check::warn(
            title,
            "a change is under way: the checks below may see either version",
            "run the doctor again when it completes",
        )
    } else {
        Check::pass(title)
    }
}

/// The stack's outputs naming each tier's usage plan (template.yaml's Outputs).
pub const PLAN_OUTPUTS: [(&str, &str); 3] =
    [("FREE", "FreeUsagePlanId"), ("PRO", "UsagePlanId"), ("BUSINESS", "BusinessUsagePlanId")];

impl Stack {
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn output(&self, name: &str) -> Option<&str> {
        self.outputs.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The paid tiers' lookup keys (PRO, and BUSINESS when set).
    pub fn lookup_keys(&self) -> Vec<&str> {
        ["ProLookupKey", "BusinessLookupKey"].iter().filter_map(|p| self.parameter(p)).collect()
    }

    /// The product API's id and stage (the stack's parameters).
    pub fn product_api(&self) -> Option<(&str, &str)> {
        let id = self.parameters.get("ProductRestApiId")?;
        let stage = self.parameters.get("ProductStageName").map(String::as_str).unwrap_or("prod");
        Some((id, stage))
    }

    /// (tier, usage plan id) of each tier with keys.
    pub fn usage_plans(&self) -> Vec<(&'static str, &str)> {
        PLAN_OUTPUTS.iter().filter_map(|(tier, out)| self.outputs.get(*out).map(|id| (*tier, id.as_str()))).collect()
    }
}

/// One method of the product API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    pub path: String,
    pub resource_id: String,
    pub http_method: String,
    pub api_key_required: bool,
    /// `MOCK`, `HTTP_PROXY`, `AWS_PROXY`, …: an OPTIONS method may go without a key only when
    /// it is a mock (a CORS preflight); forwarded, it serves the API.
    pub integration_type: Option<String>,
}

/// A deployment the stage serves: its own, or its canary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: String,
    pub canary: bool,
    /// (path, method, apiKeyRequired) from GetDeployment's `apiSummary`; `None` when the
    /// service returned none (moto).
    pub methods: Option<Vec<(String, String, bool)>>,
}

/// A tier's usage plan as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub tier: String,
    pub id: String,
    /// `None`: no usage plan with this id.
    pub api_stages: Option<Vec<(String, String)>>,
}

/// What was read about the product API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductApi {
    pub rest_api_id: String,
    pub stage_name: String,
    /// The Region of the credentials / stack.
    pub region: String,
    /// `None`: no REST API with this id here.
    pub api_key_source: Option<String>,
    pub stage_exists: bool,
    /// The API's current method definitions (GetResources).
    pub methods: Vec<Method>,
    /// The deployments the stage serves (its own, and a canary's).
    pub deployments: Vec<Deployment>,
    pub plans: Vec<Plan>,
}

impl ProductApi {
    /// A CORS preflight: OPTIONS with a mock integration in the current definitions.
    fn preflight(&self, path: &str, method: &str) -> bool {
        method.eq_ignore_ascii_case("OPTIONS")
            && self.methods.iter().any(|m| {
                m.path == path
                    && m.http_method.eq_ignore_ascii_case("OPTIONS")
                    && m.integration_type.as_deref() == Some("MOCK")
            })
    }
}

fn update_method_fix(api: &ProductApi, methods: &[&Method]) -> String {
    let mut fix = String::from("require a key on each, then deploy the stage:");
    for m in methods {
        fix.push_str(&format!(
            "\naws apigateway update-method --region {} --rest-api-id {} --resource-id {} --http-method {} --patch-operations op=replace,path=/apiKeyRequired,value=true",
            api.region, api.rest_api_id, m.resource_id, m.http_method
        ));
    }
    fix.push_str(&format!(
        "\naws apigateway create-deployment --region {} --rest-api-id {} --stage-name {}",
        api.region, api.rest_api_id, api.stage_name
    ));
    fix
}

/// The product API's checks.
pub fn check_product_api(api: &ProductApi) -> Vec<Check> {
    let mut out = Vec::new();
    let name = format!("{}/{}", api.rest_api_id, api.stage_name);
    let Some(source) = &api.api_key_source else {
        out.push(Check::fail(
            format!("product API {} is in this account and Region ({})", api.rest_api_id, api.region),
            format!("no REST API {} in {} for these credentials", api.rest_api_id, api.region),
            "deploy paykey in the account and Region of the API you sell, with ProductRestApiId set to its id (aws apigateway get-rest-apis; an HTTP API's id is not found here: usage plans and API keys are REST API features); usage plans can only bind stages of their own account and Region",
        ));
        return out;
    };
    if !api.stage_exists {
        out.push(Check::fail(
            format!("product API stage {name} exists"),
            format!("REST API {} has no stage {:?}", api.rest_api_id, api.stage_name),
            format!(
                "deploy the product API to that stage (aws apigateway create-deployment --rest-api-id {} --stage-name {}), or set ProductStageName to one it has (aws apigateway get-stages --rest-api-id {})",
                api.rest_api_id, api.stage_name, api.rest_api_id
            ),
        ));
    } else {
        out.push(Check::pass(format!("product API stage {name} exists in {}", api.region)));
    }

    // Methods: a mock OPTIONS (a CORS preflight) may go without a key.
    let open: Vec<&Method> =
        api.methods.iter().filter(|m| !m.api_key_required && !api.preflight(&m.path, &m.http_method)).collect();
    let keyed = api.methods.iter().filter(|m| !api.preflight(&m.path, &m.http_method)).count();
    if keyed == 0 {
        out.push(Check::fail(
            format!("the product API's methods require an API key ({})", api.rest_api_id),
            "the API has no method (besides OPTIONS): nothing is sold",
            "add the methods of the API you sell, each with apiKeyRequired, and deploy the stage",
        ));
    } else if open.is_empty() {
        out.push(Check::pass(format!("every method of the product API requires an API key ({keyed} methods)")));
    } else {
        let list: Vec<String> = open.iter().map(|m| format!("{} {}", m.http_method, m.path)).collect();
        out.push(Check::fail(
            "every method of the product API requires an API key",
            format!(
                "{} of {keyed} methods answer without a key, outside every usage plan's quota: {}",
                open.len(),
                list.join(", ")
            ),
            update_method_fix(api, &open),
        ));
    }
    let deploy = format!(
        "aws apigateway create-deployment --region {} --rest-api-id {} --stage-name {}",
        api.region, api.rest_api_id, api.stage_name
    );
    for d in &api.deployments {
        let which = if d.canary {
            format!("the canary deployment {} of stage {}", d.id, api.stage_name)
        } else {
            format!("the deployment stage {} serves ({})", api.stage_name, d.id)
        };
        let Some(deployed) = &d.methods else {
            out.push(Check::warn(
                format!("{which} was not compared"),
                "API Gateway returned no apiSummary for it; the check above read the API's current definitions",
                format!("after changing methods, deploy the stage: {deploy}"),
            ));
            continue;
        };
        let open: Vec<String> = deployed
            .iter()
            .filter(|(p, m, k)| !k && !api.preflight(p, m))
            .map(|(p, m, _)| format!("{m} {p}"))
            .collect();
        if open.is_empty() {
            out.push(Check::pass(format!("{which} requires a key on every method")));
        } else {
            out.push(Check::fail(
                format!("{which} requires a key on every method"),
                format!("deployed without a key: {}", open.join(", ")),
                if d.canary {
                    format!("promote or delete the canary after deploying the current definitions: {deploy} --canary-settings …, or aws apigateway update-stage … op=remove,path=/canarySettings")
                } else {
                    format!("deploy the current definitions: {deploy}")
                },
            ));
        }
        let defined: std::collections::BTreeSet<(&str, &str)> =
            api.methods.iter().map(|m| (m.path.as_str(), m.http_method.as_str())).collect();
        let served: std::collections::BTreeSet<(&str, &str)> =
            deployed.iter().map(|(p, m, _)| (p.as_str(), m.as_str())).collect();
        let only_defined: Vec<String> = defined.difference(&served).map(|(p, m)| format!("{m} {p}")).collect();
        let only_served: Vec<String> = served.difference(&defined).map(|(p, m)| format!("{m} {p}")).collect();
        if !only_defined.is_empty() || !only_served.is_empty() {
            let mut detail = Vec::new();
            if !only_defined.is_empty() {
                detail.push(format!("defined, not deployed: {}", only_defined.join(", ")));
            }
            if !only_served.is_empty() {
                detail.push(format!("deployed, no longer defined: {}", only_served.join(", ")));
            }
            out.push(Check::warn(
                format!("{which} matches the API's definitions"),
                detail.join("\n"),
                format!("deploy the current definitions: {deploy}"),
            ));
        }
    }
    if source != "HEADER" {
        out.push(Check::warn(
            "customers' keys are read from the x-api-key header",
            format!("the API's apiKeySource is {source}: a Lambda authorizer must return the key as usageIdentifierKey"),
            format!(
                "if the API has no such authorizer: aws apigateway update-rest-api --region {} --rest-api-id {} --patch-operations op=replace,path=/apiKeySource,value=HEADER",
                api.region, api.rest_api_id
            ),
        ));
    }

    if api.plans.is_empty() {
        out.push(Check::fail(
            "the stack has a usage plan for each tier with keys",
            "the stack's outputs name no usage plan (UsagePlanId)",
            "is this a paykey stack? redeploy it with the current template",
        ));
    }
    for p in &api.plans {
        let title = format!("{} usage plan {} is bound to {name}", p.tier, p.id);
        match &p.api_stages {
            None => out.push(Check::fail(
                title,
                format!("no usage plan {} in {}", p.id, api.region),
                "redeploy the stack (sam deploy): it creates the tiers' usage plans",
            )),
            Some(stages) if stages.iter().any(|(a, s)| *a == api.rest_api_id && *s == api.stage_name) => {
                out.push(Check::pass(title))
            }
            Some(stages) => {
                let bound: Vec<String> = stages.iter().map(|(a, s)| format!("{a}/{s}")).collect();
                out.push(Check::fail(
                    title,
                    if bound.is_empty() { "bound to no stage".to_string() } else { format!("bound to {}", bound.join(", ")) },
                    format!(
                        "redeploy the stack with ProductRestApiId={} ProductStageName={} (the template binds each plan to that stage; a plan changed by hand is put back)",
                        api.rest_api_id, api.stage_name
                    ),
                ));
            }
        }
    }
    out
}

/// Reads the stack through CloudFormation's DescribeStacks.
pub async fn read_stack(cf: &aws_sdk_cloudformation::Client, name: &str) -> Result<Stack, String> {
    let out = cf.describe_stacks().stack_name(name).send().await.map_err(|e| {
        format!("cannot read stack {name:?}: {}", aws_sdk_cloudformation::error::DisplayErrorContext(&e))
    })?;
    let s = out.stacks().first().ok_or_else(|| format!("no stack {name:?}"))?;
    Ok(Stack {
        name: s.stack_name().unwrap_or(name).to_string(),
        status: s.stack_status().map(|st| st.as_str().to_string()).unwrap_or_default(),
        parameters: s
            .parameters()
            .iter()
            .filter_map(|p| Some((p.parameter_key()?.to_string(), p.parameter_value()?.to_string())))
            .collect(),
        outputs: s
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
            .collect(),
    })
}

fn is_not_found<E: aws_sdk_apigateway::error::ProvideErrorMetadata>(
    e: &aws_sdk_apigateway::error::SdkError<E>,
) -> bool {
    e.as_service_error().and_then(|s| s.code()) == Some("NotFoundException")
}

fn ag_error<E: std::error::Error + 'static>(op: &str, e: aws_sdk_apigateway::error::SdkError<E>) -> String {
    format!("API Gateway {op}: {}", aws_sdk_apigateway::error::DisplayErrorContext(&e))
}

/// Reads what [`check_product_api`] checks, through API Gateway (GetRestApi, GetStage,
/// GetDeployment with its API summary, GetResources with methods, GetUsagePlan).
pub async fn read_product_api(
    ag: &aws_sdk_apigateway::Client,
    region: &str,
    stack: &Stack,
) -> Result<ProductApi, String> {
    let (id, stage) =
        stack.product_api().ok_or("the stack has no ProductRestApiId parameter: is it a paykey stack?")?;
    let mut api = ProductApi {
        rest_api_id: id.to_string(),
        stage_name: stage.to_string(),
        region: region.to_string(),
        api_key_source: None,
        stage_exists: false,
        methods: Vec::new(),
        deployments: Vec::new(),
        plans: Vec::new(),
    };
    for (tier, plan) in stack.usage_plans() {
        let api_stages = match ag.get_usage_plan().usage_plan_id(plan).send().await {
            Ok(p) => Some(
                p.api_stages()
                    .iter()
                    .map(|s| (s.api_id().unwrap_or_default().to_string(), s.stage().unwrap_or_default().to_string()))
                    .collect(),
            ),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(ag_error("GetUsagePlan", e)),
        };
        api.plans.push(Plan { tier: tier.to_string(), id: plan.to_string(), api_stages });
    }
    match ag.get_rest_api().rest_api_id(id).send().await {
        Ok(r) => {
            api.api_key_source = Some(r.api_key_source().map(|s| s.as_str().to_string()).unwrap_or("HEADER".into()))
        }
        Err(e) if is_not_found(&e) => return Ok(api),
        Err(e) => return Err(ag_error("GetRestApi", e)),
    }
    let served: Vec<(String, bool)> = match ag.get_stage().rest_api_id(id).stage_name(stage).send().await {
        Ok(s) => {
            api.stage_exists = true;
            let canary = s.canary_settings().and_then(|c| c.deployment_id()).map(|d| (d.to_string(), true));
            s.deployment_id().map(|d| (d.to_string(), false)).into_iter().chain(canary).collect()
        }
        Err(e) if is_not_found(&e) => Vec::new(),
        Err(e) => return Err(ag_error("GetStage", e)),
    };
    for (d, canary) in served {
        let r = ag
            .get_deployment()
            .rest_api_id(id)
            .deployment_id(&d)
            .embed("apisummary")
            .send()
            .await
            .map_err(|e| ag_error("GetDeployment", e))?;
        let methods = r.api_summary().map(|summary| {
            let mut deployed = Vec::new();
            for (path, methods) in summary {
                for (m, snap) in methods {
                    deployed.push((path.clone(), m.clone(), snap.api_key_required()));
                }
            }
            deployed.sort();
            deployed
        });
        api.deployments.push(Deployment { id: d, canary, methods });
    }
    let mut position: Option<String> = None;
    loop {
        let page = ag
            .get_resources()
            .rest_api_id(id)
            .embed("methods")
            .limit(500)
            .set_position(position.take())
            .send()
            .await
            .map_err(|e| ag_error("GetResources", e))?;
        for r in page.items() {
            for (m, def) in r.resource_methods().into_iter().flatten() {
                api.methods.push(Method {
                    path: r.path().unwrap_or_default().to_string(),
                    resource_id: r.id().unwrap_or_default().to_string(),
                    http_method: m.clone(),
                    api_key_required: def.api_key_required().unwrap_or(false),
                    integration_type: def.method_integration().and_then(|i| i.r#type()).map(|t| t.as_str().to_string()),
                });
            }
        }
        match page.position() {
            Some(p) if !p.is_empty() && !page.items().is_empty() => position = Some(p.to_string()),
            _ => break,
        }
    }
    api.methods.sort_by(|a, b| (&a.path, &a.http_method).cmp(&(&b.path, &b.http_method)));
    Ok(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ProductApi {
        ProductApi {
            rest_api_id: "abc123".into(),
            stage_name: "prod".into(),
            region: "us-east-1".into(),
            api_key_source: Some("HEADER".into()),
            stage_exists: true,
            methods: vec![
                Method {
                    path: "/mail".into(),
                    resource_id: "r1".into(),
                    http_method: "GET".into(),
                    api_key_required: true,
                    integration_type: Some("HTTP_PROXY".into()),
                },
                Method {
                    path: "/mail".into(),
                    resource_id: "r1".into(),
                    http_method: "OPTIONS".into(),
                    api_key_required: false,
                    integration_type: Some("MOCK".into()),
                },
            ],
            deployments: vec![Deployment {
                id: "d1".into(),
                canary: false,
                methods: Some(vec![("/mail".into(), "GET".into(), true), ("/mail".into(), "OPTIONS".into(), false)]),
            }],
            plans: vec![Plan {
                tier: "PRO".into(),
                id: "up1".into(),
                api_stages: Some(vec![("abc123".into(), "prod".into())]),
            }],
        }
    }

    fn failed(api: &ProductApi) -> Vec<String> {
        check_product_api(api).into_iter().filter(|c| c.status == Status::Fail).map(|c| c.to_string()).collect()
    }

    #[test]
    fn the_stack_status_is_judged() {
        assert_eq!(check_stack_status("UPDATE_COMPLETE").status, Status::Pass);
        assert_eq!(check_stack_status("UPDATE_ROLLBACK_COMPLETE").status, Status::Fail);
        assert_eq!(check_stack_status("UPDATE_ROLLBACK_FAILED").status, Status::Fail);
        assert_eq!(check_stack_status("ROLLBACK_COMPLETE").status, Status::Fail);
        assert_eq!(check_stack_status("UPDATE_IN_PROGRESS").status, Status::Warn);
    }

    #[test]
    fn a_correct_product_api_passes_every_check() {
        let checks = check_product_api(&good());
        assert!(checks.iter().all(|c| c.status == Status::Pass), "{checks:#?}");
        assert_eq!(checks.len(), 4);
    }

    #[test]
    fn a_method_deployed_without_a_key_fails_even_when_the_current_definition_has_one() {
        let mut api = good();
        api.deployments[0].methods =
            Some(vec![("/mail".into(), "GET".into(), false), ("/mail".into(), "OPTIONS".into(), false)]);
        let f = failed(&api);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("deployed without a key: GET /mail") && f[0].contains("create-deployment"), "{}", f[0]);
    }

    #[test]
    fn an_options_method_forwarded_to_the_backend_needs_a_key_too() {
        let mut api = good();
        api.methods[1].integration_type = Some("HTTP_PROXY".into());
        let f = failed(&api);
        assert_eq!(f.len(), 2, "the definition and the deployment: {f:?}");
        assert!(f[0].contains("OPTIONS /mail"), "{}", f[0]);
    }

    #[test]
    fn a_canary_is_checked_like_the_stage_and_a_stale_deployment_is_a_warning() {
        let mut api = good();
        api.deployments.push(Deployment {
            id: "d0".into(),
            canary: true,
            methods: Some(vec![("/old".into(), "GET".into(), false)]),
        });
        let checks = check_product_api(&api);
        let f: Vec<String> = checks.iter().filter(|c| c.status == Status::Fail).map(|c| c.to_string()).collect();
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("canary deployment d0") && f[0].contains("GET /old"), "{}", f[0]);
        let w: Vec<String> = checks.iter().filter(|c| c.status == Status::Warn).map(|c| c.to_string()).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("deployed, no longer defined: GET /old") && w[0].contains("defined, not deployed: GET /mail"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn an_api_key_source_other_than_the_header_is_a_warning_with_its_fix() {
        let mut api = good();
        api.api_key_source = Some("AUTHORIZER".into());
        let checks = check_product_api(&api);
        let w: Vec<_> = checks.iter().filter(|c| c.status == Status::Warn).collect();
        assert_eq!(w.len(), 1);
        assert!(w[0].to_string().contains("value=HEADER"));
        assert!(failed(&api).is_empty());
    }

    #[test]
    fn a_missing_api_stops_the_other_product_checks() {
        let mut api = good();
        api.api_key_source = None;
        let checks = check_product_api(&api);
        assert_eq!(checks.len(), 1);
        assert!(checks[0].to_string().contains("same") || checks[0].to_string().contains("account and Region"));
    }
}
