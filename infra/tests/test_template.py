"""Security-relevant properties of template.yaml, asserted on the parsed template.

Run by the test command with the venv's pytest; cfn-lint's loader reads the CloudFormation
short-form tags (!Ref, !Sub, !GetAtt) into their long forms.
"""
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
T = cfn_yaml.load(str(ROOT / "template.yaml"))
R = T["Resources"]
FUNCTIONS = {k: v for k, v in R.items() if v["Type"] == "AWS::Serverless::Function"}


def actions(fn):
    out = set()
    for policy in FUNCTIONS[fn]["Properties"].get("Policies", []):
        for st in policy["Statement"]:
            a = st["Action"]
            out.update(a if isinstance(a, list) else [a])
    return out


def statements(fn):
    return [st for p in FUNCTIONS[fn]["Properties"].get("Policies", []) for st in p["Statement"]]


def test_custom_attributes_are_readable_but_not_writable_by_the_app_client():
    client = R["UserPoolClient"]["Properties"]
    assert not [a for a in client["WriteAttributes"] if a.startswith("custom:")]
    assert {"custom:plan_type", "custom:stripe_customer_id"} <= set(client["ReadAttributes"])
    assert client["GenerateSecret"] is False
    names = {a["Name"] for a in R["UserPool"]["Properties"]["Schema"]}
    assert {"plan_type", "stripe_customer_id"} <= names


ROUTES = {
    ("/checkout-sessions", "POST"): ("CreateCheckoutSessionFunction", "CognitoAuthorizer"),
    ("/create-api-key/{session_id}/{one_time_key}", "GET"): ("CreateApiKeyFunction", "NONE"),
    ("/create-billing-portal-by-user", "GET"): ("CreateBillingPortalFunction", "CognitoAuthorizer"),
    ("/account", "GET"): ("GetAccountFunction", "CognitoAuthorizer"),
    ("/stripe/webhook", "POST"): ("StripeWebhookFunction", "NONE"),
}


def test_every_route_has_the_intended_authorizer_and_no_other_route_exists():
    seen = {}
    for name, fn in FUNCTIONS.items():
        for ev in fn["Properties"]["Events"].values():
            assert ev["Type"] == "Api"
            p = ev["Properties"]
            assert p["RestApiId"] == {"Ref": "PaykeyApi"}
            seen[(p["Path"], p["Method"])] = (name, p["Auth"]["Authorizer"])
    assert seen == ROUTES


def test_cors_allows_the_app_origin_only_and_preflight_needs_no_token():
    api = R["PaykeyApi"]["Properties"]
    assert api["Cors"]["AllowOrigin"] == {"Fn::Sub": "'${AppUrl}'"}
    assert "Authorization" in api["Cors"]["AllowHeaders"]
    assert api["Auth"]["AddDefaultAuthorizerToCorsPreflight"] is False
    assert "DefaultAuthorizer" not in api["Auth"]
    assert api["Auth"]["Authorizers"]["CognitoAuthorizer"]["UserPoolArn"] == {"Fn::GetAtt": ["UserPool", "Arn"]}
    assert "StageName" in T["Parameters"] and api["StageName"] == {"Ref": "StageName"}


EXPECTED_ACTIONS = {
    "CreateCheckoutSessionFunction": {"dynamodb:PutItem", "cognito-idp:AdminGetUser", "ssm:GetParameter"},
    "CreateApiKeyFunction": {
        "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem",
        "apigateway:GET", "apigateway:POST", "apigateway:PATCH", "apigateway:DELETE",
        "cognito-idp:AdminUpdateUserAttributes", "ssm:GetParameter",
    },
    "CreateBillingPortalFunction": {"cognito-idp:AdminGetUser", "ssm:GetParameter"},
    "GetAccountFunction": {"dynamodb:GetItem", "apigateway:GET", "cognito-idp:AdminGetUser"},
    "StripeWebhookFunction": {
        "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query",
        "apigateway:GET", "apigateway:POST", "apigateway:PATCH", "apigateway:DELETE",
        "cognito-idp:AdminGetUser", "cognito-idp:AdminUpdateUserAttributes", "ssm:GetParameter",
    },
}


@pytest.mark.parametrize("fn", sorted(EXPECTED_ACTIONS))
def test_each_function_has_exactly_the_actions_it_uses(fn):
    assert actions(fn) == EXPECTED_ACTIONS[fn]


@pytest.mark.parametrize("fn", sorted(EXPECTED_ACTIONS))
def test_no_wildcard_actions_or_resources(fn):
    for st in statements(fn):
        assert st["Effect"] == "Allow"
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        assert not [a for a in acts if "*" in a], st
        res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        assert "*" not in res, st


def test_only_the_key_issuing_functions_may_change_api_keys_and_usage_plans():
    writers = {fn for fn in FUNCTIONS if actions(fn) & {"apigateway:POST", "apigateway:PATCH", "apigateway:DELETE"}}
    assert writers == {"CreateApiKeyFunction", "StripeWebhookFunction"}
    readers = {fn for fn in FUNCTIONS if any(a.startswith("apigateway:") for a in actions(fn))}
    assert readers == writers | {"GetAccountFunction"}


def test_api_gateway_permissions_are_scoped_to_keys_and_the_pro_usage_plan():
    for fn in FUNCTIONS:
        for st in statements(fn):
            if not any(a.startswith("apigateway:") for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])):
                continue
            res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            for r in res:
                s = r["Fn::Sub"]
                assert s.endswith(("/apikeys", "/apikeys/*")) or "/usageplans/${ProUsagePlan}/keys" in s, s


@pytest.mark.parametrize("table", ["SessionsTable", "ApiKeysTable"])
def test_tables_are_on_demand_recoverable_encrypted_and_expire_items(table):
    p = R[table]["Properties"]
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert p["TimeToLiveSpecification"] == {"AttributeName": "ExpiresAt", "Enabled": True}
    assert R[table]["DeletionPolicy"] == "Retain"


def test_table_keys_keep_the_original_attribute_names():
    assert R["SessionsTable"]["Properties"]["KeySchema"] == [{"AttributeName": "SessionID", "KeyType": "HASH"}]
    assert R["ApiKeysTable"]["Properties"]["KeySchema"] == [{"AttributeName": "UserID", "KeyType": "HASH"}]
    gsi = R["ApiKeysTable"]["Properties"]["GlobalSecondaryIndexes"][0]
    assert gsi["IndexName"] == "StripeCustomerId-index"


def test_functions_are_arm64_al2023_rust_builds_of_existing_crates():
    g = T["Globals"]["Function"]
    assert g["Runtime"] == "provided.al2023" and g["Architectures"] == ["arm64"] and g["Handler"] == "bootstrap"
    for name, fn in FUNCTIONS.items():
        assert fn["Metadata"]["BuildMethod"] == "rust-cargolambda", name
        binary = fn["Metadata"]["BuildProperties"]["Binary"]
        assert (ROOT / "functions" / binary / "Cargo.toml").is_file(), binary


def test_stripe_secrets_come_from_ssm_never_from_plain_values():
    for name, p in T["Parameters"].items():
        default = str(p.get("Default", ""))
        assert not default.startswith(("sk_", "rk_", "whsec_")), name
    for name, fn in FUNCTIONS.items():
        env = fn["Properties"].get("Environment", {}).get("Variables", {})
        assert "STRIPE_API_KEY" not in env and "STRIPE_WEBHOOK_SECRET" not in env, name
        if "ssm:GetParameter" in actions(name):
            assert env["STRIPE_API_KEY_PARAMETER"] == {"Ref": "StripeSecretKeyParameter"}, name
    assert FUNCTIONS["StripeWebhookFunction"]["Properties"]["Environment"]["Variables"]["STRIPE_WEBHOOK_SECRET_PARAMETER"] == {"Ref": "StripeWebhookSecretParameter"}


def test_the_pro_usage_plan_has_a_monthly_quota_and_throttling_from_parameters():
    p = R["ProUsagePlan"]["Properties"]
    assert p["Quota"] == {"Limit": {"Ref": "ProQuotaLimit"}, "Period": "MONTH"}
    assert T["Parameters"]["ProQuotaLimit"]["Default"] == 100000
    assert p["Throttle"] == {"RateLimit": {"Ref": "ProThrottleRateLimit"}, "BurstLimit": {"Ref": "ProThrottleBurstLimit"}}
    assert p["ApiStages"] == [{"ApiId": {"Ref": "ProductRestApiId"}, "Stage": {"Ref": "ProductStageName"}}]


def test_every_function_has_a_log_group_with_retention():
    groups = [r["Properties"] for r in R.values() if r["Type"] == "AWS::Logs::LogGroup"]
    named = {g["LogGroupName"]["Fn::Sub"] for g in groups}
    assert named == {f"/aws/lambda/${{{fn}}}" for fn in FUNCTIONS}
    assert all(g["RetentionInDays"] == {"Ref": "LogRetentionDays"} for g in groups)


def test_outputs_give_what_operators_need():
    assert {"ApiUrl", "UserPoolId", "UserPoolClientId", "WebhookUrl"} <= set(T["Outputs"])


def test_samconfig_fixes_no_profile_or_account():
    import re
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
