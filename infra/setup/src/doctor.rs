//! `paykey-doctor`: checks a deployed paykey stack against what it must be wired to, and says
//! how to fix what is not. Today: the product API — the REST API being sold (the stack's
//! `ProductRestApiId` / `ProductStageName` parameters) must have that stage in the stack's
//! account and Region, every method of it must require an API key (without that, a usage
//! plan's quota and throttle limit nothing: a call without a key is let through), and each
//! tier's usage plan (the stack's `*UsagePlanId` outputs) must be bound to that stage.
//!
//! The checks are pure functions of what was read ([`ProductApi`]); [`read_stack`] and
//! [`read_product_api`] read it through CloudFormation and API Gateway.

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
    fn pass(title: impl Into<String>) -> Self {
        Self { status: Status::Pass, title: title.into(), detail: None, fix: None }
    }
    fn fail(title: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { status: Status::Fail, title: title.into(), detail: Some(detail.into()), fix: Some(fix.into()) }
    }
    fn warn(title: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
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

/// The stack's outputs naming each tier's usage plan (template.yaml's Outputs).
pub const PLAN_OUTPUTS: [(&str, &str); 3] =
    [("FREE", "FreeUsagePlanId"), ("PRO", "UsagePlanId"), ("BUSINESS", "BusinessUsagePlanId")];

impl Stack {
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
    /// The methods of the deployment the stage serves (GetDeployment `apiSummary`), when the
    /// service returned it: (path, method, apiKeyRequired).
    pub deployed: Option<Vec<(String, String, bool)>>,
    pub plans: Vec<Plan>,
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
            "deploy paykey in the account and Region of the API you sell, with ProductRestApiId set to its id (aws apigateway get-rest-apis); usage plans can only bind stages of their own account and Region",
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

    // Methods: OPTIONS (CORS preflights) may go without a key.
    let open: Vec<&Method> =
        api.methods.iter().filter(|m| !m.api_key_required && !m.http_method.eq_ignore_ascii_case("OPTIONS")).collect();
    let keyed = api.methods.iter().filter(|m| !m.http_method.eq_ignore_ascii_case("OPTIONS")).count();
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
    match &api.deployed {
        Some(deployed) => {
            let open: Vec<String> = deployed
                .iter()
                .filter(|(_, m, k)| !k && !m.eq_ignore_ascii_case("OPTIONS"))
                .map(|(p, m, _)| format!("{m} {p}"))
                .collect();
            if open.is_empty() {
                out.push(Check::pass(format!("the deployment stage {} serves requires a key on every method", api.stage_name)));
            } else {
                out.push(Check::fail(
                    format!("the deployment stage {} serves requires a key on every method", api.stage_name),
                    format!("deployed without a key: {}", open.join(", ")),
                    format!(
                        "deploy the current definitions: aws apigateway create-deployment --region {} --rest-api-id {} --stage-name {}",
                        api.region, api.rest_api_id, api.stage_name
                    ),
                ));
            }
        }
        None if api.stage_exists => out.push(Check::warn(
            format!("the deployment stage {} serves was not compared", api.stage_name),
            "API Gateway returned no apiSummary for it; the check above read the API's current definitions",
            format!(
                "after changing methods, deploy the stage: aws apigateway create-deployment --region {} --rest-api-id {} --stage-name {}",
                api.region, api.rest_api_id, api.stage_name
            ),
        )),
        None => {}
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
        deployed: None,
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
    let deployment = match ag.get_stage().rest_api_id(id).stage_name(stage).send().await {
        Ok(s) => {
            api.stage_exists = true;
            s.deployment_id().map(str::to_string)
        }
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(ag_error("GetStage", e)),
    };
    if let Some(d) = deployment {
        let r = ag
            .get_deployment()
            .rest_api_id(id)
            .deployment_id(&d)
            .embed("apisummary")
            .send()
            .await
            .map_err(|e| ag_error("GetDeployment", e))?;
        if let Some(summary) = r.api_summary() {
            let mut deployed = Vec::new();
            for (path, methods) in summary {
                for (m, snap) in methods {
                    deployed.push((path.clone(), m.clone(), snap.api_key_required()));
                }
            }
            deployed.sort();
            api.deployed = Some(deployed);
        }
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
                },
                Method {
                    path: "/mail".into(),
                    resource_id: "r1".into(),
                    http_method: "OPTIONS".into(),
                    api_key_required: false,
                },
            ],
            deployed: Some(vec![("/mail".into(), "GET".into(), true), ("/mail".into(), "OPTIONS".into(), false)]),
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
    fn a_correct_product_api_passes_every_check() {
        let checks = check_product_api(&good());
        assert!(checks.iter().all(|c| c.status == Status::Pass), "{checks:#?}");
        assert_eq!(checks.len(), 4);
    }

    #[test]
    fn a_method_deployed_without_a_key_fails_even_when_the_current_definition_has_one() {
        let mut api = good();
        api.deployed = Some(vec![("/mail".into(), "GET".into(), false)]);
        let f = failed(&api);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("deployed without a key: GET /mail") && f[0].contains("create-deployment"), "{}", f[0]);
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
