"""template.yaml as CloudFormation deploys it.

The SAM source is first run through the SAM transform that CloudFormation runs
(`AWS::Serverless-2016-10-31`: the `samtranslator` library shipped with the pinned SAM CLI),
offline, with every `CodeUri` replaced by an `s3://` placeholder as after `sam package`. The
assertions about what gets deployed (routes and their authorizers, CORS, gateway responses,
access logs and throttling, function roles, permissions, outputs) read the *transformed*
template. A template the transform rejects fails every test here (cfn-lint and `sam validate`
do not run the transform).

What this does not prove: that CloudFormation and the AWS services accept every property value
(only a real `sam deploy` can), nor that the IAM actions listed below are all the code needs.

PAYKEY_TEMPLATE=<path> runs the same assertions on another template (e.g. an older revision).
"""
import copy
import json
import os
import re
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(os.environ.get("PAYKEY_TEMPLATE", ROOT / "template.yaml"))
SOURCE = cfn_yaml.load(str(TEMPLATE))
SAM_FUNCTIONS = {k: v for k, v in SOURCE["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


def sam_transform(source):
    """The SAM transform as CloudFormation applies it to a packaged template."""
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    template = yaml_parse(source.read_text())
    for r in template["Resources"].values():
        if r["Type"] == "AWS::Serverless::Function":
            r["Properties"]["CodeUri"] = "s3://paykey-artifacts/paykey/0123456789abcdef"

    class NoManagedPolicies:
        def load(self):
            return {}

    try:
        return transform(template, {}, NoManagedPolicies())
    except InvalidDocumentException as e:
        pytest.fail("the SAM transform rejects the template:\n" + "\n".join(str(c) for c in e.causes), pytrace=False)


@pytest.fixture(scope="module")
def cfn():
    return sam_transform(TEMPLATE)


def of_type(cfn, t):
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == t}


def listify(x):
    return x if isinstance(x, list) else [x]


# ------------------------------------------------------------------ the transform itself


def test_the_sam_transform_accepts_the_template_and_leaves_no_serverless_resource(cfn):
    assert "Transform" not in cfn
    left = [k for k, v in cfn["Resources"].items() if v["Type"].startswith("AWS::Serverless::")]
    assert left == []
    assert set(of_type(cfn, "AWS::Lambda::Function")) == set(SAM_FUNCTIONS)


# ------------------------------------------------------------------ routes and authorization

# The README's HTTP API table: route -> (function, authorizer). None = no authorizer.
ROUTES = {
    ("/checkout-sessions", "post"): ("CreateCheckoutSessionFunction", "CognitoAuthorizer"),
    ("/create-api-key/{session_id}/{one_time_key}", "get"): ("CreateApiKeyFunction", None),
    ("/create-billing-portal-by-user", "get"): ("CreateBillingPortalFunction", "CognitoAuthorizer"),
    ("/account", "get"): ("GetAccountFunction", "CognitoAuthorizer"),
    ("/api-key", "post"): ("GetAccountFunction", "CognitoAuthorizer"),
    ("/api-key/rotate", "post"): ("GetAccountFunction", "CognitoAuthorizer"),
    ("/api-key/cap", "put"): ("GetAccountFunction", "CognitoAuthorizer"),
    ("/plans", "get"): ("CreateCheckoutSessionFunction", None),
    ("/stripe/webhook", "post"): ("StripeWebhookFunction", None),
}

# CORS preflights: each path a browser calls has an OPTIONS method on the function behind it
# (no token), which answers AppUrl or an AllowedOrigins origin without a call of its own
# (shared/src/handlers.rs; tested in shared/tests/handlers.rs). The webhook is not a browser's.
PREFLIGHTS = {
    (path, "options"): (fn, None)
    for (path, method), (fn, _) in ROUTES.items()
    if path not in ("/stripe/webhook", "/create-api-key/{session_id}/{one_time_key}")
}

# Unauthenticated routes that reach nothing but cached reads (GET /plans: prices from Stripe,
# at most one read per tier per cache period and container; nothing written): throttled on the
# stage like the other public routes, but their function needs no concurrency ceiling.
READ_ONLY_PUBLIC = {("/plans", "get")}

# Stripe's success redirect has an API of its own (RedirectApi), whose gateway responses are
# all redirects to the front end; every route is on PaykeyApi, the success redirect too (for
# checkouts started before RedirectApi existed).
REDIRECT_ROUTES = {("/create-api-key/{session_id}/{one_time_key}", "get")}
APIS = ("PaykeyApi", "RedirectApi")


def apis_of(route):
    return set(APIS) if route in REDIRECT_ROUTES else {"PaykeyApi"}


def rest_api_body(cfn, api="PaykeyApi"):
    apis = of_type(cfn, "AWS::ApiGateway::RestApi")
    assert sorted(apis) == sorted(APIS)
    return apis[api]["Properties"]["Body"]


def method_auth(body, op):
    """(AuthorizationType, authorizer name) API Gateway gives a method imported from this
    OpenAPI body: a `security` entry naming a `securityDefinitions` entry of type
    cognito_user_pools is COGNITO_USER_POOLS with that authorizer; no security, or only names
    without a definition (SAM writes `NONE`), is NONE."""
    defs = body.get("securityDefinitions", {})
    named = [name for req in op.get("security", []) for name in req if name in defs]
    if not named:
        return ("NONE", None)
    assert len(named) == 1, op["security"]
    d = defs[named[0]]
    assert d["x-amazon-apigateway-authtype"] == "cognito_user_pools", d
    assert d["x-amazon-apigateway-authorizer"]["type"] == "cognito_user_pools", d
    return ("COGNITO_USER_POOLS", named[0])


def test_every_route_has_the_readme_authorizer_and_no_other_route_exists(cfn):
    seen = {}
    for api in APIS:
        body = rest_api_body(cfn, api)
        for path, ops in body["paths"].items():
            for method, op in ops.items():
                if method == "options":
                    continue
                uri = op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
                fn = re.search(r"\$\{(\w+)\.Arn\}", uri).group(1)
                assert op["x-amazon-apigateway-integration"]["type"] == "aws_proxy"
                auth_type, authorizer = method_auth(body, op)
                assert auth_type == ("NONE" if authorizer is None else "COGNITO_USER_POOLS")
                assert api in apis_of((path, method)), (path, method, api)
                seen[(path, method)] = (fn, authorizer)
    assert seen == ROUTES


def test_the_cognito_authorizer_is_the_stacks_user_pool_reading_the_authorization_header(cfn):
    d = rest_api_body(cfn)["securityDefinitions"]
    assert set(d) == {"CognitoAuthorizer"}
    a = d["CognitoAuthorizer"]
    assert a["in"] == "header" and a["name"] == "Authorization"
    assert a["x-amazon-apigateway-authorizer"]["providerARNs"] == [{"Fn::GetAtt": ["UserPool", "Arn"]}]


def test_preflight_is_answered_without_a_token_by_the_paths_own_function(cfn):
    """No mock preflight (it can answer one fixed origin): OPTIONS on every browser path is a
    Lambda proxy method on the function serving the path, without an authorizer."""
    body = rest_api_body(cfn)
    got = {}
    for path, ops in body["paths"].items():
        if "options" not in ops:
            continue
        op = ops["options"]
        integ = op["x-amazon-apigateway-integration"]
        assert integ["type"] == "aws_proxy", path
        fn = re.search(r"\$\{(\w+)\.Arn\}", integ["uri"]["Fn::Sub"]).group(1)
        got[(path, "options")] = (fn, method_auth(body, op)[1])
    assert got == PREFLIGHTS
    assert "/stripe/webhook" in body["paths"] and "options" not in body["paths"]["/stripe/webhook"]


def test_the_functions_read_the_allowed_origins_parameter_whose_pattern_matches_what_they_accept(cfn):
    """ALLOWED_ORIGINS (shared/src/config.rs) takes comma-separated scheme://host[:port]; the
    parameter's pattern refuses what the functions would refuse at cold start."""
    for name, fn in functions(cfn).items():
        assert fn["Properties"]["Environment"]["Variables"]["ALLOWED_ORIGINS"] == {"Ref": "AllowedOrigins"}, name
    p = cfn["Parameters"]["AllowedOrigins"]
    assert p["Default"] == ""
    pattern = p["AllowedPattern"]
    for ok in ["", "https://admin.example.com", "https://a.example,http://localhost:5173", "http://[::1]:8080"]:
        assert re.fullmatch(pattern, ok), ok
    for bad in ["https://a.example/app", "a.example", "https://a.example, https://b.example", "*", "https://a.example/", "https://a.example,"]:
        assert not re.fullmatch(pattern, bad), bad
    # the parser's ceiling (shared/src/config.rs MAX_ALLOWED_ORIGINS): a deploy it would refuse
    # at every cold start is refused by CloudFormation instead
    twenty = ",".join(f"https://o{i}.example" for i in range(20))
    assert re.fullmatch(pattern, twenty)
    assert not re.fullmatch(pattern, twenty + ",https://o20.example")


def test_only_the_sweeper_reclaims_idle_free_keys_within_what_its_config_accepts(cfn):
    """FREE_KEY_IDLE_DAYS (shared/src/config.rs): 0 is off, 1-60 days; the parameter's bounds are
    the parser's, and only sweep-keys reads it."""
    p = cfn["Parameters"]["FreeKeyIdleDays"]
    assert (p["Type"], str(p["Default"]), str(p["MinValue"]), str(p["MaxValue"])) == ("Number", "0", "0", "60")
    for name, fn in functions(cfn).items():
        env = fn["Properties"]["Environment"]["Variables"]
        if name == "SweepKeysFunction":
            assert env["FREE_KEY_IDLE_DAYS"] == {"Ref": "FreeKeyIdleDays"}
        else:
            assert "FREE_KEY_IDLE_DAYS" not in env, name


def test_the_redirect_api_has_no_preflight_and_no_authorizer(cfn):
    body = rest_api_body(cfn, "RedirectApi")
    assert "securityDefinitions" not in body or not body["securityDefinitions"]
    assert all(set(ops) == {"get"} for ops in body["paths"].values()), body["paths"]


FRONT_DOOR = ROOT / "infra/tests/front-door.json"


def parameter_default(ref):
    return SOURCE["Parameters"][ref["Ref"]]["Default"]


def gateway_responses(cfn, api):
    """type -> {status, location}: the status API Gateway answers (None: the type's own) and
    the Location header (`{AppUrl}` for the parameter), as the transformed API says."""
    out = {}
    for kind, r in rest_api_body(cfn, api).get("x-amazon-apigateway-gateway-responses", {}).items():
        loc = r.get("responseParameters", {}).get("gatewayresponse.header.Location")
        if loc is not None:
            loc = loc["Fn::Sub"].strip("'").replace("${AppUrl}", "{AppUrl}")
        out[kind] = {"status": int(r["statusCode"]) if "statusCode" in r else None, "location": loc}
    return out


def front_door(cfn):
    """What stands in front of the two functions a burst of payments reaches, with the
    parameters' defaults: the route's throttle, the function's reserved concurrency and
    timeout, and the API's gateway responses. shared/tests/money.rs puts this in front of the
    flows (`a_launch_burst_behind_the_deployed_limits_…`)."""
    out = {}
    for name, api, fn, route in [
        ("success_redirect", "RedirectApi", "CreateApiKeyFunction", ("*", "*")),
        ("webhook", "PaykeyApi", "StripeWebhookFunction", ("/stripe/webhook", "POST")),
    ]:
        settings = {(decode_resource_path(m["ResourcePath"]), m["HttpMethod"]): m for m in stage(cfn, api)["MethodSettings"]}
        m = settings[route]
        props = functions(cfn)[fn]["Properties"]
        cond, reserved, no = props["ReservedConcurrentExecutions"]["Fn::If"]
        assert cond == "ReservePublicConcurrency" and no == {"Ref": "AWS::NoValue"}
        out[name] = {
            "throttle_rate_per_second": parameter_default(m["ThrottlingRateLimit"]),
            "throttle_burst": parameter_default(m["ThrottlingBurstLimit"]),
            "reserved_concurrency": parameter_default(reserved),
            "timeout_seconds": props["Timeout"],
            "gateway_responses": gateway_responses(cfn, api),
        }
    return out


def test_the_front_door_the_burst_test_models_is_the_templates(cfn):
    derived = json.dumps(front_door(cfn), indent=2, sort_keys=True) + "\n"
    if os.environ.get("PAYKEY_UPDATE_FRONT_DOOR"):
        FRONT_DOOR.write_text(derived)
    assert FRONT_DOOR.read_text() == derived, "the template's limits changed: run with PAYKEY_UPDATE_FRONT_DOOR=1, then the burst test"


def test_a_paying_browser_never_sees_api_gateways_json_on_the_success_redirect(cfn):
    """Every answer API Gateway itself makes on the redirect's API is a redirect to a page of
    the front end: its throttle and every 5XX (a throttled function — Lambda's 429 becomes
    INTEGRATION_FAILURE —, a timeout) to the thanks page marked pending, other 4XX to the cancel
    page. Types not listed fall back to DEFAULT_4XX / DEFAULT_5XX (API Gateway's rule)."""
    gr = gateway_responses(cfn, "RedirectApi")
    assert set(gr) == {"THROTTLED", "DEFAULT_4XX", "DEFAULT_5XX"}
    pending = {"status": 302, "location": "{AppUrl}/thanks_upgrade?status=pending"}
    assert gr["THROTTLED"] == pending and gr["DEFAULT_5XX"] == pending
    assert gr["DEFAULT_4XX"] == {"status": 302, "location": "{AppUrl}/canceled_upgrade"}
    for kind, r in rest_api_body(cfn, "RedirectApi")["x-amazon-apigateway-gateway-responses"].items():
        assert r["responseParameters"]["gatewayresponse.header.Cache-Control"] == "'no-store'", kind


def test_gateway_errors_echo_the_callers_origin_so_any_front_end_can_read_them(cfn):
    """The authorizer's 401, a throttle's 429, a failed function's 5xx: API Gateway answers
    them itself, and a gateway response cannot compare the Origin with a list, so it echoes it
    (without Access-Control-Allow-Credentials: nothing a cookie could unlock)."""
    gr = rest_api_body(cfn)["x-amazon-apigateway-gateway-responses"]
    assert set(gr) == {"DEFAULT_4XX", "DEFAULT_5XX"}
    for name, r in gr.items():
        assert r["responseParameters"] == {
            "gatewayresponse.header.Access-Control-Allow-Origin": "method.request.header.Origin",
            "gatewayresponse.header.Vary": "'Origin'",
        }, name


def test_each_function_may_be_invoked_only_by_this_api_on_its_own_route(cfn):
    perms = of_type(cfn, "AWS::Lambda::Permission")
    got = set()
    scheduled = []
    for p in perms.values():
        props = p["Properties"]
        if props["Principal"] == "events.amazonaws.com":
            scheduled.append(props)
            continue
        assert props["Action"] == "lambda:InvokeFunction" and props["Principal"] == "apigateway.amazonaws.com"
        fn = props["FunctionName"]["Ref"]
        arn, values = props["SourceArn"]["Fn::Sub"]
        assert values["__Stage__"] == "*"
        m = re.fullmatch(r"arn:aws:execute-api:\$\{AWS::Region\}:\$\{AWS::AccountId\}:\$\{__ApiId__\}/\$\{__Stage__\}/([A-Z]+)(/.*)", arn)
        assert m, arn
        path = re.sub(r"\*", "{}", m.group(2))
        got.add((values["__ApiId__"]["Ref"], fn, m.group(1), path))
    want = {
        (api, fn, method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
        for (path, method), (fn, _) in {**ROUTES, **PREFLIGHTS}.items()
        for api in apis_of((path, method))
    }
    assert got == want
    # the sweeper alone is invoked by EventBridge, by its own schedule rule only
    assert [p["FunctionName"]["Ref"] for p in scheduled] == ["SweepKeysFunction"]
    rule = cfn["Resources"][scheduled[0]["SourceArn"]["Fn::GetAtt"][0]]
    assert rule["Type"] == "AWS::Events::Rule" and rule["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    assert [t["Arn"] for t in rule["Properties"]["Targets"]] == [{"Fn::GetAtt": ["SweepKeysFunction", "Arn"]}]


# ------------------------------------------------------------------ stage: access logs, throttling, tracing


def stage(cfn, api="PaykeyApi"):
    stages = of_type(cfn, "AWS::ApiGateway::Stage")
    assert sorted(stages) == sorted(f"{a}Stage" for a in APIS)
    return stages[f"{api}Stage"]["Properties"]


@pytest.mark.parametrize("api", APIS)
def test_the_stage_writes_one_json_access_log_line_with_request_ids_and_caller_identity(cfn, api):
    s = stage(cfn, api)
    assert s["StageName"] == {"Ref": "StageName"}
    assert s["TracingEnabled"] is True
    log = s["AccessLogSetting"]
    assert log["DestinationArn"] == {"Fn::GetAtt": ["PaykeyApiAccessLogs", "Arn"]}
    line = json.loads(log["Format"])  # one JSON object per request
    assert line["requestId"] == "$context.requestId"
    assert line["extendedRequestId"] == "$context.extendedRequestId"
    assert line["sourceIp"] == "$context.identity.sourceIp"
    assert line["sub"] == "$context.authorizer.claims.sub"
    assert {"httpMethod", "resourcePath", "status", "userAgent", "integrationError"} <= set(line)
    group = cfn["Resources"]["PaykeyApiAccessLogs"]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_the_stage_is_ordered_after_the_account_logging_role_when_the_stack_creates_it(cfn):
    r = cfn["Resources"]
    assert r["ApiGatewayAccount"]["Condition"] == "CreateApiGatewayAccountRole"
    assert r["ApiGatewayAccount"]["Properties"]["CloudWatchRoleArn"] == {"Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]}
    assert r["ApiGatewayAccountReady"]["Metadata"]["AccountSetting"]["Fn::If"][1] == {"Ref": "ApiGatewayAccount"}
    for api in APIS:
        assert "ApiGatewayAccountReady" in listify(r[api].get("DependsOn", []))
        # the stage comes after the deployment, which comes after the REST API
        deployment = [d for d, v in of_type(cfn, "AWS::ApiGateway::Deployment").items() if v["Properties"]["RestApiId"] == {"Ref": api}]
        assert len(deployment) == 1 and stage(cfn, api)["DeploymentId"] == {"Ref": deployment[0]}


def decode_resource_path(p):
    """MethodSettings.ResourcePath: a leading slash, then the path with each / written ~1
    (`/~1stripe~1webhook` is /stripe/webhook); `/*` is every resource."""
    assert p.startswith("/"), p
    return p[1:].replace("~1", "/")


def test_the_stage_throttles_everything_and_the_unauthenticated_routes_harder(cfn):
    settings = stage(cfn)["MethodSettings"]
    by_route = {(decode_resource_path(m["ResourcePath"]), m["HttpMethod"]): m for m in settings}
    everything = by_route.pop(("*", "*"))
    assert everything["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRateLimit"}
    assert everything["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurstLimit"}
    public = {(path, method.upper()) for (path, method), (_, auth) in {**ROUTES, **PREFLIGHTS}.items() if auth is None}
    assert set(by_route) == public
    paths = rest_api_body(cfn)["paths"]
    for (path, method), m in by_route.items():
        assert method.lower() in paths[path], path  # the setting names a real method
        assert m["ThrottlingRateLimit"] == {"Ref": "PublicRouteThrottleRateLimit"}
        assert m["ThrottlingBurstLimit"] == {"Ref": "PublicRouteThrottleBurstLimit"}
    # the redirect's API: the public route limits on its only route
    [m] = stage(cfn, "RedirectApi")["MethodSettings"]
    assert (m["ResourcePath"], m["HttpMethod"]) == ("/*", "*")
    assert m["ThrottlingRateLimit"] == {"Ref": "PublicRouteThrottleRateLimit"}
    assert m["ThrottlingBurstLimit"] == {"Ref": "PublicRouteThrottleBurstLimit"}


# ------------------------------------------------------------------ functions and their roles


def functions(cfn):
    return of_type(cfn, "AWS::Lambda::Function")


def role_of(cfn, fn):
    ref = functions(cfn)[fn]["Properties"]["Role"]
    return cfn["Resources"][ref["Fn::GetAtt"][0]]["Properties"]


def statements(cfn, fn):
    """The role's statements; a conditional one (`Fn::If [cond, statement, AWS::NoValue]`) as
    when its condition holds (the widest the role can be)."""
    out = []
    for p in role_of(cfn, fn).get("Policies", []):
        for st in p["PolicyDocument"]["Statement"]:
            if "Fn::If" in st:
                assert st["Fn::If"][2] == {"Ref": "AWS::NoValue"}, st
                st = st["Fn::If"][1]
            out.append(st)
    return out


def actions(cfn, fn):
    return {a for st in statements(cfn, fn) for a in listify(st["Action"])}


# What each function's code calls, derived by shared/tests/iam.rs from the flows' backend
# operations and the functions' init (not copied from the template): resource → actions.
DERIVED = json.loads((ROOT / "infra/tests/iam-derived.json").read_text())
DERIVED_ACTIONS = {fn: {a for acts in g.values() for a in acts} for fn, g in DERIVED.items()}

APIGW = "arn:${AWS::Partition}:apigateway:${AWS::Region}::"
SSM = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
PLAN_REF = re.compile(r"\$\{(\w+UsagePlan)\}")


def derived_name(env, r):
    """A policy resource as iam-derived.json names it, and the usage plan it names (or None)."""
    if "Fn::GetAtt" in r:
        name, attr = r["Fn::GetAtt"]
        assert attr == "Arn", r
        return name, None
    s = r["Fn::Sub"]
    m = re.fullmatch(r"\$\{(\w+)\.Arn\}(/index/[\w-]+)", s)
    if m:
        return m.group(1) + m.group(2), None
    if s.startswith(APIGW):
        path = s[len(APIGW):]
        plans = PLAN_REF.findall(path)
        assert len(plans) <= 1, s
        return "apigateway::" + PLAN_REF.sub("{plan}", path), (plans[0] if plans else None)
    if s.startswith(SSM):
        # the parameter the function is told to read: `<SECRET>_PARAMETER: !Ref <Parameter>`
        ref = re.fullmatch(r"\$\{(\w+)\}", s[len(SSM):]).group(1)
        var = [k for k, v in env.items() if v == {"Ref": ref} and k.endswith("_PARAMETER")]
        assert len(var) == 1, (s, var)
        return "ssm:parameter/" + var[0][: -len("_PARAMETER")], None
    raise AssertionError(f"a resource the derivation has no name for: {s}")


def granted(cfn, fn):
    """resource → actions the role allows, each usage plan's resources folded into `{plan}`
    after checking that every tier's plan is granted the same actions."""
    env = functions(cfn)[fn]["Properties"]["Environment"]["Variables"]
    by_plan = {}
    for p in role_of(cfn, fn).get("Policies", []):
        for st in p["PolicyDocument"]["Statement"]:
            # Unconditional, so what the default deployment's role allows is what is compared;
            # only a tier's plan may come and go with the tier's condition.
            assert "Fn::If" not in st and "Condition" not in st, (fn, st)
            assert st["Effect"] == "Allow", (fn, st)
            for r in listify(st["Resource"]):
                cond = None
                if "Fn::If" in r:
                    cond, r, no = r["Fn::If"]
                    assert no == {"Ref": "AWS::NoValue"}, r
                name, plan = derived_name(env, r)
                assert cond == (PLAN_CONDITION[plan] if plan else None), (fn, name, plan, "under condition", cond)
                by_plan.setdefault(name, {}).setdefault(plan, set()).update(listify(st["Action"]))
    out = {}
    for name, plans in by_plan.items():
        if "{plan}" in name:
            assert set(plans) == set(PLAN_CONDITION), (fn, name, "every tier's plan, no other", set(plans))
            assert len({frozenset(a) for a in plans.values()}) == 1, (fn, name, "the same actions on every plan", plans)
        out[name] = set().union(*plans.values())
    return out


@pytest.mark.parametrize("fn", sorted(DERIVED))
def test_each_deployed_role_allows_exactly_what_the_code_calls_on_what_it_names(cfn, fn):
    """Action × resource, both ways: nothing the code calls is denied, nothing else allowed."""
    want = {(r, a) for r, acts in DERIVED[fn].items() for a in acts}
    have = {(r, a) for r, acts in granted(cfn, fn).items() for a in acts}
    assert have == want, {"missing": sorted(want - have), "unused": sorted(have - want)}


def test_every_function_has_derived_permissions():
    assert set(DERIVED) == set(functions(sam_transform(TEMPLATE)))


@pytest.mark.parametrize("fn", sorted(DERIVED_ACTIONS))
def test_each_role_is_assumable_by_lambda_only_and_adds_only_the_basic_logging_policy(cfn, fn):
    role = role_of(cfn, fn)
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {"Action": ["sts:AssumeRole"], "Effect": "Allow", "Principal": {"Service": ["lambda.amazonaws.com"]}}
    ]
    assert role["ManagedPolicyArns"] == ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]


@pytest.mark.parametrize("fn", sorted(DERIVED_ACTIONS))
def test_no_wildcard_actions_or_resources(cfn, fn):
    for st in statements(cfn, fn):
        assert st["Effect"] == "Allow"
        assert not [a for a in listify(st["Action"]) if "*" in a], st
        assert "*" not in listify(st["Resource"]), st


def test_only_the_key_issuing_functions_may_change_api_keys_and_usage_plans(cfn):
    writers = {fn for fn in functions(cfn) if actions(cfn, fn) & {"apigateway:POST", "apigateway:PATCH", "apigateway:DELETE"}}
    assert writers == {"CreateApiKeyFunction", "StripeWebhookFunction", "GetAccountFunction", "SweepKeysFunction"}
    readers = {fn for fn in functions(cfn) if any(a.startswith("apigateway:") for a in actions(cfn, fn))}
    assert readers == writers


def resources(st):
    """A statement's resources, each as (condition or None, Fn::Sub string)."""
    out = []
    for r in listify(st["Resource"]):
        if "Fn::If" in r:
            cond, yes, no = r["Fn::If"]
            assert no == {"Ref": "AWS::NoValue"}, r
            out.append((cond, yes["Fn::Sub"]))
        else:
            out.append((None, r["Fn::Sub"]))
    return out


def api_gateway_statements(cfn, fn):
    """(condition or None, statement) for the function's API Gateway statements."""
    out = []
    for p in role_of(cfn, fn).get("Policies", []):
        for st in p["PolicyDocument"]["Statement"]:
            cond = None
            if "Fn::If" in st:
                cond, st, no = st["Fn::If"]
                assert no == {"Ref": "AWS::NoValue"}, st
            if any(a.startswith("apigateway:") for a in listify(st["Action"])):
                out.append((cond, st))
    return out


# Which tier's usage plan exists under which condition.
PLAN_CONDITION = {"ProUsagePlan": None, "FreeUsagePlan": "HasFreeKeys", "BusinessUsagePlan": "HasBusiness"}


def test_api_gateway_permissions_are_scoped_to_keys_and_the_stacks_usage_plans(cfn):
    for fn in functions(cfn):
        for st_cond, st in api_gateway_statements(cfn, fn):
            for cond, s in resources(st):
                if s.endswith(("/apikeys", "/apikeys/*")):
                    continue
                if s.endswith("::/usageplans"):
                    assert listify(st["Action"]) == ["apigateway:GET"], st  # GetUsagePlans?keyId=
                    continue
                m = re.search(r"/usageplans/\$\{(\w+)\}/(keys(/\*)?|usage)$", s)
                assert m and m.group(1) in PLAN_CONDITION, s
                # a conditional plan is named only under its condition
                assert PLAN_CONDITION[m.group(1)] in (None, cond, st_cond), (fn, s, cond, st_cond)


def test_functions_are_arm64_al2023_with_the_global_settings(cfn):
    for name, fn in functions(cfn).items():
        p = fn["Properties"]
        assert p["Runtime"] == "provided.al2023" and p["Architectures"] == ["arm64"] and p["Handler"] == "bootstrap", name
        assert p["Code"] == {"S3Bucket": "paykey-artifacts", "S3Key": "paykey/0123456789abcdef"}, name
        assert p["Timeout"] == 20, name  # below FULFILMENT_LEASE_SECONDS (60)
        env = p["Environment"]["Variables"]
        assert env["MY_DOMAIN"] == {"Ref": "AppUrl"} and env["USER_POOL_ID"] == {"Ref": "UserPool"}, name


def test_the_unauthenticated_functions_have_a_concurrency_ceiling_and_the_others_none(cfn):
    # (the preflights make no call of their own, like READ_ONLY_PUBLIC)
    public = {fn for route, (fn, auth) in ROUTES.items() if auth is None and route not in READ_ONLY_PUBLIC}
    for name, fn in functions(cfn).items():
        rc = fn["Properties"].get("ReservedConcurrentExecutions")
        if name in public:
            assert rc == {"Fn::If": ["ReservePublicConcurrency", {"Ref": "PublicFunctionConcurrency"}, {"Ref": "AWS::NoValue"}]}, name
        else:
            assert rc is None, name
    assert cfn["Conditions"]["ReservePublicConcurrency"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "PublicFunctionConcurrency"}, 0]}]}


def test_stripe_secrets_come_from_ssm_never_from_plain_values(cfn):
    for name, p in cfn["Parameters"].items():
        default = str(p.get("Default", ""))
        assert not default.startswith(("sk_", "rk_", "whsec_")), name
    for name, fn in functions(cfn).items():
        env = fn["Properties"]["Environment"]["Variables"]
        assert "STRIPE_API_KEY" not in env and "STRIPE_WEBHOOK_SECRET" not in env, name
        if actions(cfn, name) & {"ssm:GetParameter", "ssm:GetParameters"}:
            assert env["STRIPE_API_KEY_PARAMETER"] == {"Ref": "StripeSecretKeyParameter"}, name
    webhook = functions(cfn)["StripeWebhookFunction"]["Properties"]["Environment"]["Variables"]
    assert webhook["STRIPE_WEBHOOK_SECRET_PARAMETER"] == {"Ref": "StripeWebhookSecretParameter"}


def test_every_function_has_a_log_group_with_retention(cfn):
    groups = [r["Properties"] for r in of_type(cfn, "AWS::Logs::LogGroup").values()]
    named = {g["LogGroupName"]["Fn::Sub"] for g in groups}
    assert named == {f"/aws/lambda/${{{fn}}}" for fn in functions(cfn)} | {"/aws/apigateway/${AWS::StackName}-access"}
    assert all(g["RetentionInDays"] == {"Ref": "LogRetentionDays"} for g in groups)


# ------------------------------------------------------------------ users, data, the plan


def test_custom_attributes_are_readable_but_not_writable_by_the_app_client(cfn):
    client = cfn["Resources"]["UserPoolClient"]["Properties"]
    assert not [a for a in client["WriteAttributes"] if a.startswith("custom:")]
    assert {"custom:plan_type", "custom:stripe_customer_id"} <= set(client["ReadAttributes"])
    assert client["GenerateSecret"] is False
    names = {a["Name"] for a in cfn["Resources"]["UserPool"]["Properties"]["Schema"]}
    assert {"plan_type", "stripe_customer_id"} <= names


@pytest.mark.parametrize("table", ["SessionsTable", "ApiKeysTable"])
def test_tables_are_on_demand_recoverable_encrypted_and_expire_items(cfn, table):
    t = cfn["Resources"][table]
    p = t["Properties"]
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert p["TimeToLiveSpecification"] == {"AttributeName": "ExpiresAt", "Enabled": True}
    assert t["DeletionPolicy"] == "Retain" and t["UpdateReplacePolicy"] == "Retain"


def test_table_keys_keep_the_original_attribute_names(cfn):
    r = cfn["Resources"]
    assert r["SessionsTable"]["Properties"]["KeySchema"] == [{"AttributeName": "SessionID", "KeyType": "HASH"}]
    assert r["ApiKeysTable"]["Properties"]["KeySchema"] == [{"AttributeName": "UserID", "KeyType": "HASH"}]
    gsi = r["ApiKeysTable"]["Properties"]["GlobalSecondaryIndexes"][0]
    assert gsi["IndexName"] == "StripeCustomerId-index"


@pytest.mark.parametrize("tier", ["Free", "Pro", "Business"])
def test_each_tier_has_a_usage_plan_with_a_monthly_quota_and_throttling_from_parameters(cfn, tier):
    r = cfn["Resources"][f"{tier}UsagePlan"]
    assert r.get("Condition") == PLAN_CONDITION[f"{tier}UsagePlan"]
    p = r["Properties"]
    assert p["Quota"] == {"Limit": {"Ref": f"{tier}QuotaLimit"}, "Period": "MONTH"}
    assert p["Throttle"] == {"RateLimit": {"Ref": f"{tier}ThrottleRateLimit"}, "BurstLimit": {"Ref": f"{tier}ThrottleBurstLimit"}}
    # every plan on the product's one stage (so a key is in one of them at a time)
    assert p["ApiStages"] == [{"ApiId": {"Ref": "ProductRestApiId"}, "Stage": {"Ref": "ProductStageName"}}]
    assert cfn["Parameters"]["ProQuotaLimit"]["Default"] == 100000


def evaluate(node, params, conditions):
    """Fn::Join / Fn::If / Fn::Sub / Ref of the catalog, for given parameters (resources by name)."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return [evaluate(n, params, conditions) for n in node]
    (fn, arg), = node.items()
    if fn == "Fn::Join":
        return arg[0].join(evaluate(x, params, conditions) for x in evaluate(arg[1], params, conditions))
    if fn == "Fn::If":
        return evaluate(arg[1] if conditions[arg[0]] else arg[2], params, conditions)
    if fn == "Fn::Sub":
        return re.sub(r"\$\{([\w:]+)\}", lambda m: str(params.get(m.group(1), "<" + m.group(1) + ">")), arg)
    raise AssertionError(f"unexpected {fn}")


def catalog_of(cfn, **overrides):
    params = {k: v.get("Default") for k, v in cfn["Parameters"].items()}
    params.update(overrides)
    params.update({"ProUsagePlan": "plan-pro", "FreeUsagePlan": "plan-free", "BusinessUsagePlan": "plan-business"})
    conditions = {
        "HasFreeKeys": int(params["FreeQuotaLimit"]) != 0,
        "HasBusiness": params["BusinessLookupKey"] != "",
        "ProMetered": params["ProMeteredLookupKey"] != "",
        "BusinessMetered": params["BusinessMeteredLookupKey"] != "",
    }
    raws = {json.dumps(fn["Properties"]["Environment"]["Variables"]["PAYKEY_CATALOG"]) for fn in functions(cfn).values()}
    assert len(raws) == 1, "every function reads the same catalog"
    return json.loads(evaluate(json.loads(raws.pop()), params, conditions))


def test_the_default_catalog_is_the_single_tier_deployment(cfn):
    assert catalog_of(cfn) == {"tiers": [
        {"name": "FREE"},
        {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "plan-pro", "trial_days": 0,
         "quota": {"limit": 100000, "period": "MONTH"}, "throttle": {"rate": 10, "burst": 20}},
    ], "meter_event_name": "paykey_api_requests"}


def test_metered_tiers_carry_their_metered_price_and_included_requests_and_the_sweeper_the_stripe_key(cfn):
    c = catalog_of(
        cfn, BusinessLookupKey="FMMailBusiness", ProMeteredLookupKey="FMMailProCalls", ProIncludedRequests=1000,
        ProQuotaLimit=5000, BusinessMeteredLookupKey="FMMailBusinessCalls", BusinessIncludedRequests=10000,
        MeterEventName="fmmail_requests",
    )
    assert [t.get("metered") for t in c["tiers"]] == [
        None,
        {"lookup_key": "FMMailProCalls", "included": 1000},
        {"lookup_key": "FMMailBusinessCalls", "included": 10000},
    ]
    assert c["meter_event_name"] == "fmmail_requests"
    only_pro = catalog_of(cfn, ProMeteredLookupKey="FMMailProCalls", ProIncludedRequests=1000)
    assert [t["name"] for t in only_pro["tiers"]] == ["FREE", "PRO"], "no BUSINESS without its lookup key"
    plain_business = catalog_of(cfn, BusinessLookupKey="FMMailBusiness", BusinessMeteredLookupKey="X")
    assert "metered" in plain_business["tiers"][2] and "metered" not in plain_business["tiers"][1]
    env = functions(cfn)["SweepKeysFunction"]["Properties"]["Environment"]["Variables"]
    assert env["STRIPE_API_KEY_PARAMETER"] == {"Ref": "StripeSecretKeyParameter"}


def test_a_catalog_with_free_keys_business_and_trials_names_each_tiers_plan(cfn):
    c = catalog_of(cfn, FreeQuotaLimit=1000, BusinessLookupKey="FMMailBusiness", ProTrialDays=14, BusinessTrialDays=7)
    assert [(t["name"], t.get("lookup_key"), t.get("usage_plan_id"), t.get("trial_days", 0)) for t in c["tiers"]] == [
        ("FREE", None, "plan-free", 0),
        ("PRO", "FMMailPro", "plan-pro", 14),
        ("BUSINESS", "FMMailBusiness", "plan-business", 7),
    ]
    assert c["tiers"][0]["quota"] == {"limit": 1000, "period": "MONTH"}
    # every tier name fits custom:plan_type (its constraints cannot change once the pool exists)
    attr = next(a for a in SOURCE["Resources"]["UserPool"]["Properties"]["Schema"] if a["Name"] == "plan_type")
    assert all(len(t["name"]) <= int(attr["StringAttributeConstraints"]["MaxLength"]) for t in c["tiers"])


def test_every_function_reads_the_catalog_and_none_the_single_plan_variables(cfn):
    for name, fn in functions(cfn).items():
        env = fn["Properties"]["Environment"]["Variables"]
        assert "PAYKEY_CATALOG" in env, name
        assert "USAGE_PLAN_ID" not in env and "ALLOWED_LOOKUP_KEYS" not in env, name


def test_outputs_give_what_operators_need(cfn):
    o = cfn["Outputs"]
    assert o["ApiUrl"]["Value"] == {"Fn::Sub": "https://${PaykeyApi}.execute-api.${AWS::Region}.amazonaws.com/${StageName}"}
    assert o["RedirectApiUrl"]["Value"] == {"Fn::Sub": "https://${RedirectApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${StageName}"}
    checkout = functions(cfn)["CreateCheckoutSessionFunction"]["Properties"]["Environment"]["Variables"]
    # Stripe is sent to the redirect's own API: its execute-api URL, or the custom domain's
    assert checkout["API_URL"] == {"Fn::If": ["HasPublicRedirectBase", {"Ref": "PublicRedirectBaseUrl"}, o["RedirectApiUrl"]["Value"]]}
    assert cfn["Conditions"]["HasPublicRedirectBase"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "PublicRedirectBaseUrl"}, ""]}]}
    pattern = cfn["Parameters"]["PublicRedirectBaseUrl"]["AllowedPattern"]
    for ok in ("", "https://pay.example.com", "https://example.com/pay"):
        assert re.fullmatch(pattern, ok), ok
    for bad in ("http://pay.example.com", "https://pay.example.com/", "pay.example.com"):
        assert not re.fullmatch(pattern, bad), bad
    assert o["WebhookUrl"]["Value"] == {"Fn::Sub": "https://${PaykeyApi}.execute-api.${AWS::Region}.amazonaws.com/${StageName}/stripe/webhook"}
    assert o["UserPoolId"]["Value"] == {"Ref": "UserPool"}
    assert o["UserPoolClientId"]["Value"] == {"Ref": "UserPoolClient"}
    assert o["UsagePlanId"]["Value"] == {"Ref": "ProUsagePlan"}
    # what paykey-doctor reads (infra/setup/src/doctor.rs: PLAN_OUTPUTS, Stack::product_api)
    assert o["FreeUsagePlanId"]["Value"] == {"Ref": "FreeUsagePlan"}
    assert o["BusinessUsagePlanId"]["Value"] == {"Ref": "BusinessUsagePlan"}
    assert {"ProductRestApiId", "ProductStageName"} <= set(cfn["Parameters"])
    assert o["SessionsTableName"]["Value"] == {"Ref": "SessionsTable"}
    assert o["ApiKeysTableName"]["Value"] == {"Ref": "ApiKeysTable"}
    # the stage the URLs name is the one deployed
    assert stage(cfn)["StageName"] == {"Ref": "StageName"}


# ------------------------------------------------------------------ the SAM source: build and config


def test_functions_are_cargo_lambda_builds_of_existing_crates():
    for name, fn in SAM_FUNCTIONS.items():
        assert fn["Metadata"]["BuildMethod"] == "rust-cargolambda", name
        binary = fn["Metadata"]["BuildProperties"]["Binary"]
        assert (ROOT / "functions" / binary / "Cargo.toml").is_file(), binary
        assert fn["Properties"]["CodeUri"] == ".", name  # the workspace root: one target dir


def test_samconfig_fixes_no_profile_or_account():
    import tomllib
    text = (ROOT / "samconfig.toml").read_text()
    cfg = tomllib.loads(text)

    def keys(d):
        for k, v in d.items():
            yield k
            if isinstance(v, dict):
                yield from keys(v)

    assert "profile" not in set(keys(cfg))
    assert not re.search(r"\b\d{12}\b", text), "no account id"


def test_aws_sam_build_output_is_ignored_by_git():
    assert "/.aws-sam" in (ROOT / ".gitignore").read_text().split()


# ------------------------------------------------------------------ Checkov


def checkov_skips(template):
    """Every Checkov skip in the template: (resource, id, comment or None)."""
    out = []
    for name, r in template["Resources"].items():
        for skip in (r.get("Metadata") or {}).get("checkov", {}).get("skip", []):
            out.append((name, skip.get("id"), skip.get("comment")))
    return out


def skips_without_a_reason(template):
    return [(r, i) for r, i, c in checkov_skips(template) if not (isinstance(c, str) and len(c.strip()) >= 20)]


def test_every_checkov_skip_in_the_template_gives_its_reason():
    assert checkov_skips(SOURCE), "expected the documented skips"
    assert skips_without_a_reason(SOURCE) == []


def test_a_skip_without_a_reason_is_caught():
    t = copy.deepcopy(SOURCE)
    t["Resources"]["SessionsTable"]["Metadata"]["checkov"]["skip"].append({"id": "CKV_AWS_28"})
    t["Resources"]["ApiKeysTable"]["Metadata"]["checkov"]["skip"].append({"id": "CKV_AWS_28", "comment": " "})
    assert skips_without_a_reason(t) == [("SessionsTable", "CKV_AWS_28"), ("ApiKeysTable", "CKV_AWS_28")]


# Fixed in the template, so these must pass (not be skipped).
MUST_PASS = {
    ("CKV_AWS_76", "AWS::Serverless::Api.PaykeyApi"),  # access logging
    ("CKV_AWS_73", "AWS::Serverless::Api.PaykeyApi"),  # X-Ray tracing
    ("CKV_AWS_76", "AWS::Serverless::Api.RedirectApi"),
    ("CKV_AWS_73", "AWS::Serverless::Api.RedirectApi"),
    ("CKV_AWS_115", "AWS::Serverless::Function.CreateApiKeyFunction"),  # concurrency ceiling
    ("CKV_AWS_115", "AWS::Serverless::Function.StripeWebhookFunction"),
    ("CKV_AWS_28", "AWS::DynamoDB::Table.SessionsTable"),  # point-in-time recovery
    ("CKV_AWS_28", "AWS::DynamoDB::Table.ApiKeysTable"),
}


def test_checkov_finds_no_failed_check_and_the_fixed_checks_pass():
    checkov = os.environ.get("PAYKEY_CHECKOV")
    assert checkov, "PAYKEY_CHECKOV (the checkov executable) is set by infra/scripts/test.sh"
    import subprocess

    run = subprocess.run(
        [checkov, "-f", str(TEMPLATE), "--framework", "cloudformation", "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600,
    )
    out = json.loads(run.stdout)
    failed = [(c["check_id"], c["resource"]) for c in out["results"].get("failed_checks", [])]
    assert failed == [], failed
    assert out["summary"]["parsing_errors"] == 0
    passed = {(c["check_id"], c["resource"]) for c in out["results"].get("passed_checks", [])}
    assert MUST_PASS <= passed, MUST_PASS - passed
    skipped = {(c["check_id"], c["resource"].split(".")[-1]) for c in out["results"].get("skipped_checks", [])}
    assert skipped == {(i, r) for r, i, _ in checkov_skips(SOURCE)}, "every skip in the template is one Checkov applied"


OPENAPI = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def test_the_openapi_document_describes_exactly_the_deployed_routes_with_their_auth(cfn):
    """Every route of the SAM-transformed API is in infra/openapi/openapi.json with the same
    auth (the `cognito` scheme where API Gateway's Cognito authorizer guards it, none where it
    does not), and the document has no route the stack lacks."""
    doc = json.loads(OPENAPI.read_text())
    deployed = {}
    for api in APIS:
        body = rest_api_body(cfn, api)
        for path, ops in body["paths"].items():
            for method, op in ops.items():
                if method != "options":
                    deployed[(path, method)] = method_auth(body, op)[0] == "COGNITO_USER_POOLS"
    documented = {}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            documented[(path, method)] = bool(op.get("security", doc.get("security", [])))
    assert documented == deployed
    assert doc["openapi"].startswith("3.1")


# ------------------------------------------------------------------ deploying, upgrading, tearing down


def test_the_functions_that_open_the_billing_portal_name_paykeys_configuration(cfn):
    """Stripe's default portal configuration is the Dashboard's (API reference,
    billing_portal.configuration `is_default`), so the two functions that open the portal get
    the one paykey-setup made; it has no default, so a deploy without it is refused."""
    p = cfn["Parameters"]["PortalConfigurationId"]
    assert "Default" not in p
    assert re.fullmatch(p["AllowedPattern"], "bpc_1QabcXYZ") and not re.fullmatch(p["AllowedPattern"], "")
    named = {name for name, fn in functions(cfn).items()
             if fn["Properties"]["Environment"]["Variables"].get("STRIPE_PORTAL_CONFIGURATION") == {"Ref": "PortalConfigurationId"}}
    assert named == {"CreateCheckoutSessionFunction", "CreateBillingPortalFunction"}


def test_a_new_secrets_version_changes_every_functions_configuration(cfn):
    """Secrets are read once per execution environment; a changed environment variable makes
    Lambda start new environments, which read the secrets stored since."""
    for name, fn in functions(cfn).items():
        assert fn["Properties"]["Environment"]["Variables"].get("PAYKEY_SECRETS_VERSION") == {"Ref": "SecretsVersion"}, name


def test_the_users_outlive_the_stack_like_their_records(cfn):
    pools = of_type(cfn, "AWS::Cognito::UserPool")
    assert len(pools) == 1
    (pool,) = pools.values()
    assert (pool.get("DeletionPolicy"), pool.get("UpdateReplacePolicy")) == ("Retain", "Retain")
    assert pool["Properties"]["DeletionProtection"] == "ACTIVE"
    for t in of_type(cfn, "AWS::DynamoDB::Table").values():
        assert (t.get("DeletionPolicy"), t.get("UpdateReplacePolicy")) == ("Retain", "Retain")


def rule_holds(node, params):
    """A CloudFormation rule's Ref / Fn::Equals / Fn::Not, for given parameters."""
    (fn, arg), = node.items()
    if fn == "Ref":
        return params[arg]
    if fn == "Fn::Equals":
        a, b = (x if isinstance(x, str) else rule_holds(x, params) for x in arg)
        return a == b
    if fn == "Fn::Not":
        return not rule_holds(arg[0], params)
    raise AssertionError(f"unexpected {fn}")


@pytest.mark.parametrize("previous, pro, refused", [
    ("", "FMMailPro", False),               # a new stack
    ("FMMailPro", "FMMailPro", False),      # an upgrade that kept the default
    ("MyKey", "FMMailPro", True),           # an upgrade that would silently fall back
    ("MyKey", "MyKey", False),              # ... once ProLookupKey says it
    ("MyKey,Other", "MyKey", True),         # several keys: not expressible any more
])
def test_the_renamed_lookup_key_parameter_is_accepted_when_it_agrees_and_refused_loudly_when_not(cfn, previous, pro, refused):
    params = {k: v.get("Default") for k, v in cfn["Parameters"].items()}
    params.update(AllowedLookupKeys=previous, ProLookupKey=pro)
    rule = cfn["Rules"]["AllowedLookupKeysWasRenamed"]
    failed = [a["AssertDescription"] for a in rule["Assertions"]
              if rule_holds(rule["RuleCondition"], params) and not rule_holds(a["Assert"], params)]
    assert bool(failed) == refused
    if refused:
        # the whole override string quoted: unquoted, the shell eats '' and SAM CLI refuses
        # "AllowedLookupKeys=" as an invalid format
        assert '"ProLookupKey=' in failed[0] and "AllowedLookupKeys=''\"" in failed[0]


def test_samconfig_has_a_dev_and_a_prod_environment_that_cannot_touch_each_others_stack_or_secrets(cfn):
    import tomllib
    conf = tomllib.loads((ROOT / "samconfig.toml").read_text())
    envs = {e: conf[e] for e in ("dev", "prod")}

    def overrides(e):
        raw = envs[e]["deploy"]["parameters"].get("parameter_overrides", "")
        return dict(kv.split("=", 1) for kv in raw.split())

    assert envs["dev"]["global"]["parameters"]["stack_name"] != envs["prod"]["global"]["parameters"]["stack_name"]
    assert envs["prod"]["global"]["parameters"]["stack_name"] == conf["default"]["global"]["parameters"]["stack_name"]
    assert envs["prod"]["deploy"]["parameters"]["confirm_changeset"] is True
    dev, prod = overrides("dev"), overrides("prod")
    for name in ("StripeSecretKeyParameter", "StripeWebhookSecretParameter"):
        assert dev[name] != prod[name], name
    for e in (dev, prod):
        assert set(e) <= set(cfn["Parameters"]), "every override names a template parameter"
        for k, v in e.items():
            pattern = cfn["Parameters"][k].get("AllowedPattern")
            assert pattern is None or re.fullmatch(pattern, v), (k, v)


# ------------------------------------------------------------------ alarms, metrics, dashboard

TELEMETRY = (ROOT / "shared/src/telemetry.rs").read_text()
NAMESPACE = {"Fn::Sub": "paykey/${AWS::StackName}"}
ALARM_TARGET = [{"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}]


def alarms(cfn):
    return {k: v["Properties"] for k, v in of_type(cfn, "AWS::CloudWatch::Alarm").items()}


def test_every_function_has_an_errors_and_a_throttles_alarm_that_notify_the_topic(cfn):
    watched = {}
    for name, a in alarms(cfn).items():
        assert a["AlarmActions"] == ALARM_TARGET and a["OKActions"] == ALARM_TARGET, name
        # no data is no failure; the hourly key count keeps its state through a missed hour
        assert a["TreatMissingData"] == ("missing" if name == "KeyCeilingAlarm" else "notBreaching"), name
        if a["Namespace"] == "AWS/Lambda":
            [d] = a["Dimensions"]
            assert d["Name"] == "FunctionName"
            watched.setdefault(a["MetricName"], set()).add(d["Value"]["Ref"])
            assert (a["Statistic"], a["Threshold"], a["ComparisonOperator"]) == ("Sum", 1, "GreaterThanOrEqualToThreshold"), name
    assert watched == {"Errors": set(SAM_FUNCTIONS), "Throttles": set(SAM_FUNCTIONS)}
    topic = cfn["Resources"]["AlarmTopic"]
    assert topic["Condition"] == "CreateAlarmTopic"
    assert cfn["Conditions"]["CreateAlarmTopic"] == {"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}
    assert cfn["Outputs"]["AlarmTopicArn"]["Value"] == ALARM_TARGET[0]
    pattern = cfn["Parameters"]["AlarmTopicArn"]["AllowedPattern"]
    assert re.fullmatch(pattern, "") and re.fullmatch(pattern, "arn:aws:sns:us-east-1:123456789012:oncall")
    assert not re.fullmatch(pattern, "oncall")


def test_the_paykey_alarms_watch_metrics_the_functions_write_in_their_namespace(cfn):
    """The alarms on paykey's own metrics read the namespace every function is given
    (PAYKEY_METRICS_NAMESPACE) and a metric name shared/src/telemetry.rs writes, without
    dimensions (telemetry.rs rolls every metric up to none)."""
    for name, fn in functions(cfn).items():
        assert fn["Properties"]["Environment"]["Variables"]["PAYKEY_METRICS_NAMESPACE"] == NAMESPACE, name
    own = {n: a for n, a in alarms(cfn).items() if a["Namespace"] != "AWS/Lambda"}
    assert {a["MetricName"] for a in own.values()} == {
        "WebhookFailed", "WebhookRefused", "InitFailed", "BackendThrottled", "BackendFailed", "KeyCount",
        "UsageAlert", "UsageUnreported",
    }
    for usage in ("UsageAlertAlarm", "UsageUnreportedAlarm"):
        a = own[usage]
        assert (a["Statistic"], a["Threshold"], a["Period"], a["TreatMissingData"]) == ("Sum", 1, 3600, "notBreaching")
    ceiling = own["KeyCeilingAlarm"]
    assert (ceiling["Statistic"], ceiling["Threshold"], ceiling["Period"]) == ("Maximum", 8000, 3600)
    for name, a in own.items():
        assert a["Namespace"] == NAMESPACE, name
        assert "Dimensions" not in a, name
        assert f'"{a["MetricName"]}"' in TELEMETRY, f"{a['MetricName']} is not written by telemetry.rs"
    assert "json!([names, []])" in TELEMETRY, "the rollup to no dimension the alarms rely on"


def test_the_dashboard_is_json_showing_paykeys_metrics_and_every_function(cfn):
    body, values = cfn["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert values == {"Ns": NAMESPACE}
    refs = set(re.findall(r"\$\{([A-Za-z:]+)\}", body))
    assert refs == {"Ns", "AWS::Region"} | set(SAM_FUNCTIONS), refs
    doc = json.loads(re.sub(r"\$\{[A-Za-z:]+\}", "x", body))
    metrics = [m for w in doc["widgets"] for m in w["properties"]["metrics"]]
    names = {m[1] for m in metrics if len(m) > 1 and m[0] in ("x", ".") and isinstance(m[1], str)}
    for metric in ("Fulfilment", "FulfilmentLatency", "WebhookEvent", "WebhookFailed", "WebhookRefused", "Keys", "BackendThrottled", "InitFailed", "KeyCount"):
        assert metric in names, metric
        assert f'"{metric}"' in TELEMETRY, metric
    # the dimension values the dashboard graphs are ones the handlers write
    handlers = (ROOT / "shared/src/handlers.rs").read_text()
    fulfilment = next(w for w in doc["widgets"] if "Success redirects" in w["properties"]["title"])
    outcomes = [m[-1] for m in fulfilment["properties"]["metrics"]]
    assert outcomes[0] == "issued" and len(outcomes) == 7, outcomes
    keys = next(w for w in doc["widgets"] if w["properties"]["title"].startswith("Keys issued"))
    actions = [m[-1] for m in keys["properties"]["metrics"] if m[0] in ("x", "...") and len(m) in (2, 4)][:2]
    assert actions == ["Issued", "Rotated"], actions
    for value in outcomes + actions:
        assert f'"{value}"' in handlers, f"the dashboard graphs {value!r}, which shared/src/handlers.rs never writes"
