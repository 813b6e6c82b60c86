"""REFERENCE ONLY, not shipped: four routes the straightforward Python way, for the latency model.

What it is: a stand-in for "the original Python design" (boto3 + the stripe SDK, one call after
another, no concurrency, no caches, no retries of its own beyond what boto3 and the stripe SDK do
by default), run by the benchmarks under a Lambda Runtime API emulator beside paykey's binaries,
against the same backends (moto_server and paykey's Stripe emulator behind latency-adding
proxies), so that the number of *sequential* backend round trips on each route can be compared.

- Routes 1-2 (`POST /checkout-sessions`, `GET /create-api-key/{session_id}/{one_time_key}`)
  follow the original Python design's calls in the original order (see `round_trips()` in
  `infra/bench/src/warm.rs`, whose reference block is the same sequence on in-memory ports). The
  items they write use paykey's attribute names (`shared/src/adapters/aws/dynamodb.rs`), so
  paykey's readers understand them. As in the original, the key is named
  `paykey-pro-{user name}` (paykey names it by sub) and the subscription carries no metadata
  (paykey's checkout sets `user_id`/`user_name`): on state written by routes 1-2, route 4 takes
  paykey's own paths for such state, one Query of the customer index and one GetApiKey more.
- Routes 3-4 (`GET /account`, `POST /stripe/webhook`) did not exist in the original. They make
  the calls paykey's `get-account` and `stripe-webhook` make for the measured case (a PRO user's
  account; a PRO user's subscription deleted or updated), one after the other where paykey runs
  some side by side. Each call is listed below with where it comes from in paykey.

What it is not: a port of paykey, or a correct payment backend. It has none of paykey's
guarantees: no fulfilment claim or account-lock wait (a busy lock is a 500 here), no checkout
reuse, budgets or open-checkout pointer, no Stripe idempotency keys, no duplicate-subscription
refund, comp, suspension, rotation grace or pending key work handling, no Python-era record
fallbacks beyond those named below, and no handling of webhook event types other than
`customer.subscription.*` (others are deduplicated and marked, nothing else). Its answers carry
roughly the fields of paykey's, not exactly. Never deploy it.

Environment: AWS_LAMBDA_RUNTIME_API; AWS_DEFAULT_REGION and credentials (boto3 reads them; it does
not read AWS_REGION alone); AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER,
AWS_ENDPOINT_URL_API_GATEWAY, AWS_ENDPOINT_URL_SSM (botocore honours these service-specific
variables itself); STRIPE_API_BASE; STRIPE_API_KEY_PARAMETER and STRIPE_WEBHOOK_SECRET_PARAMETER
(SSM SecureString names); DYNAMODB_STRIPE_TABLE; DYNAMODB_API_KEY_TABLE; USER_POOL_ID;
PAYKEY_CATALOG; MY_DOMAIN; API_URL.
"""
import base64
import datetime
import hmac
import json
import os
import traceback
import urllib.request
import uuid

# Timed as the cold start: imports, both SSM reads, the clients (as the original did at init).
import boto3  # noqa: E402
import stripe

API = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime"

# paykey's constants (shared/src/flows/mod.rs Settings::new, shared/src/adapters/aws/dynamodb.rs)
KEY_NAME_PREFIX = "paykey-pro-"
SESSION_TTL = datetime.timedelta(days=30)
EVENT_TTL = datetime.timedelta(days=30)
LEASE = datetime.timedelta(seconds=60)
PAST_DUE_GRACE = datetime.timedelta(days=7)
CUSTOMER_INDEX = "StripeCustomerId-index"

try:
    ssm = boto3.client("ssm")
    STRIPE_API_KEY = ssm.get_parameter(Name=os.environ["STRIPE_API_KEY_PARAMETER"], WithDecryption=True)["Parameter"]["Value"]
    WEBHOOK_SECRET = ssm.get_parameter(Name=os.environ["STRIPE_WEBHOOK_SECRET_PARAMETER"], WithDecryption=True)["Parameter"][
        "Value"
    ]
    dynamodb = boto3.resource("dynamodb")
    SESSIONS = dynamodb.Table(os.environ["DYNAMODB_STRIPE_TABLE"])
    ACCOUNTS = dynamodb.Table(os.environ["DYNAMODB_API_KEY_TABLE"])
    cognito = boto3.client("cognito-idp")
    apigateway = boto3.client("apigateway")
    stripe.api_key = STRIPE_API_KEY
    stripe.api_base = os.environ["STRIPE_API_BASE"].rstrip("/")

    USER_POOL_ID = os.environ["USER_POOL_ID"]
    MY_DOMAIN = os.environ["MY_DOMAIN"].rstrip("/")
    API_URL = os.environ["API_URL"].rstrip("/")
    TIERS = json.loads(os.environ["PAYKEY_CATALOG"])["tiers"]
    PRO = next((t for t in TIERS if t["name"] == "PRO"), None) or next(t for t in TIERS if t.get("lookup_key"))
    FREE = next((t for t in TIERS if not t.get("lookup_key")), None)
except Exception as e:  # an init failure is reported, as Lambda's runtimes do, then the process ends
    error = {"errorMessage": str(e), "errorType": type(e).__name__}
    urllib.request.urlopen(
        urllib.request.Request(f"{API}/init/error", data=json.dumps(error).encode(), method="POST")
    ).read()
    raise


class Answer(Exception):
    """An expected refusal, answered with its status (not a 500)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def ts(t):  # paykey's `ts`: RFC 3339 with milliseconds
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def secs(t):  # paykey's PeriodEnd/TrialEnd/PastDueSince format
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def from_epoch(n):
    return None if n is None else datetime.datetime.fromtimestamp(int(n), datetime.timezone.utc)


def json_response(status, body):
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "Access-Control-Allow-Origin": MY_DOMAIN},
        "body": json.dumps(body),
    }


def redirect(location):
    return {"statusCode": 302, "headers": {"Location": location}, "body": ""}


def caller(event):
    claims = ((event.get("requestContext") or {}).get("authorizer") or {}).get("claims") or {}
    if not claims.get("sub") or not claims.get("cognito:username"):
        raise Answer(401, "not signed in")
    return claims["sub"], claims["cognito:username"]


def tier_named(name):
    return next((t for t in TIERS if t["name"] == name), None)


def error_code(e):
    return getattr(e, "response", {}).get("Error", {}).get("Code")


# ---------------------------------------------------------------------------------------------
# 1. POST /checkout-sessions (the original's calls and order)
#    Stripe Price.list -> Stripe checkout.Session.create -> DynamoDB PutItem(session)
# ---------------------------------------------------------------------------------------------
def create_checkout_session(event):
    sub, username = caller(event)
    lookup_key = json.loads(event.get("body") or "{}").get("lookup_key")
    if not lookup_key:
        raise Answer(400, "lookup_key is required")
    prices = stripe.Price.list(lookup_keys=[lookup_key], active=True)
    if not prices.data:
        raise Answer(404, f"no active price with lookup key {lookup_key}")
    one_time_key = str(uuid.uuid4())
    session = stripe.checkout.Session.create(
        mode="subscription",
        line_items=[{"price": prices.data[0].id, "quantity": 1}],
        client_reference_id=sub,
        success_url=f"{API_URL}/create-api-key/{{CHECKOUT_SESSION_ID}}/{one_time_key}",
        # paykey's cancel page (shared/src/flows/mod.rs cancel_url)
        cancel_url=f"{MY_DOMAIN}/canceled_upgrade",
    )
    t = now()
    # paykey's session_item names (DynamoStore::put_new), so paykey's readers understand it
    SESSIONS.put_item(
        Item={
            "SessionID": session.id,
            "UserSub": sub,
            "UserName": username,
            "OneTimeKey": one_time_key,
            "PaidFlag": False,
            "Status": "PENDING",
            "CreatedAt": ts(t),
            "UpdatedAt": ts(t),
            "ExpiresAt": int((t + SESSION_TTL).timestamp()),
        }
    )
    return json_response(200, {"url": session.url})


# ---------------------------------------------------------------------------------------------
# 2. GET /create-api-key/{session_id}/{one_time_key} (the original's calls and order)
#    Stripe checkout.Session.retrieve -> DynamoDB GetItem(session) -> [one-time key compared]
#    -> API Gateway CreateApiKey -> CreateUsagePlanKey(PRO) -> DynamoDB PutItem(account)
#    -> DynamoDB UpdateItem(session fulfilled) -> Cognito AdminUpdateUserAttributes
# ---------------------------------------------------------------------------------------------
def create_api_key(event):
    params = event.get("pathParameters") or {}
    session_id, one_time_key = params.get("session_id", ""), params.get("one_time_key", "")
    cancel = f"{MY_DOMAIN}/canceled_upgrade"
    if not session_id or not one_time_key:
        return redirect(cancel)
    try:
        session = stripe.checkout.Session.retrieve(session_id)
    except stripe.InvalidRequestError:  # unknown session (404)
        return redirect(cancel)
    record = SESSIONS.get_item(Key={"SessionID": session_id}).get("Item")
    if record is None or not hmac.compare_digest(str(record.get("OneTimeKey", "")).encode(), one_time_key.encode()):
        return redirect(cancel)
    if session.payment_status not in ("paid", "no_payment_required"):
        return redirect(cancel)
    sub, username = record["UserSub"], record["UserName"]
    customer, subscription = session.customer, session.subscription
    key = apigateway.create_api_key(name=f"{KEY_NAME_PREFIX}{username}", enabled=True)
    apigateway.create_usage_plan_key(usagePlanId=PRO["usage_plan_id"], keyId=key["id"], keyType="API_KEY")
    t = now()
    # paykey's account_item names (keyed by sub), so paykey's /account and webhooks read it
    account = {
        "UserID": sub,
        "UserSub": sub,
        "UserName": username,
        "Type": "PRO",
        "ApiKeyId": key["id"],
        "SubscriptionPlan": "PRO",
        "CancelAtPeriodEnd": False,
        "UpdatedAt": ts(t),
    }
    if customer:
        account["StripeCustomerId"] = customer
    if subscription:
        account["StripeSubscriptionId"] = subscription
    ACCOUNTS.put_item(Item=account)
    SESSIONS.update_item(
        Key={"SessionID": session_id},
        UpdateExpression="SET #st = :fulfilled, PaidFlag = :paid, UpdatedAt = :now",
        ExpressionAttributeNames={"#st": "Status"},
        ExpressionAttributeValues={":fulfilled": "FULFILLED", ":paid": True, ":now": ts(t)},
    )
    attributes = [{"Name": "custom:plan_type", "Value": "PRO"}]
    if customer:
        attributes.append({"Name": "custom:stripe_customer_id", "Value": customer})
    cognito.admin_update_user_attributes(UserPoolId=USER_POOL_ID, Username=username, UserAttributes=attributes)
    return redirect(f"{MY_DOMAIN}/thanks_upgrade")


# ---------------------------------------------------------------------------------------------
# 3. GET /account: paykey's calls (shared/src/flows/account.rs get_account), one after another
#    a. DynamoDB GetItem(account, consistent)   store.get_account      } side by side in paykey
#    b. Cognito AdminGetUser                     users.get_user         }
#    c. API Gateway GetApiKey(includeValue)      keys.key_value         } side by side in paykey;
#    d. API Gateway GetUsage (tier with a quota) keys.recent_usage      } (c) cached per container
# ---------------------------------------------------------------------------------------------
def quota_period(period, day):
    if period == "DAY":
        return day, day
    if period == "WEEK":
        first = day - datetime.timedelta(days=day.weekday())
        return first, first + datetime.timedelta(days=6)
    first = day.replace(day=1)
    nxt = (first + datetime.timedelta(days=32)).replace(day=1)
    return first, nxt - datetime.timedelta(days=1)


def user_attributes(username):
    try:
        out = cognito.admin_get_user(UserPoolId=USER_POOL_ID, Username=username)
    except cognito.exceptions.UserNotFoundException:
        return None
    return {a["Name"]: a.get("Value") for a in out.get("UserAttributes", [])}


def get_account(event):
    sub, username = caller(event)
    item = ACCOUNTS.get_item(Key={"UserID": sub}, ConsistentRead=True).get("Item")
    # only a record keyed by sub (paykey's account_from_item_opt)
    if item is not None and not ("UserSub" in item and "Type" in item):
        item = None
    profile = user_attributes(username)
    if profile is None or profile.get("sub") != sub:
        raise Answer(404, "user not found")
    api_key = usage = None
    if item is not None and item.get("ApiKeyId"):
        key_id = item["ApiKeyId"]
        tier = tier_named(item["Type"])
        tier = tier if tier and tier.get("usage_plan_id") else None
        try:
            value = apigateway.get_api_key(apiKey=key_id, includeValue=True)["value"]
            api_key = {"id": key_id, "value": value, "enabled": tier is not None and "Suspension" not in item}
        except apigateway.exceptions.NotFoundException:
            pass
        if tier is not None and tier.get("quota"):
            quota = tier["quota"]
            today = now().date()
            start, end = quota_period(quota["period"], today)
            days, remaining, position = [], None, None
            while True:
                kwargs = dict(usagePlanId=tier["usage_plan_id"], keyId=key_id, startDate=start.isoformat(),
                              endDate=today.isoformat(), limit=500)
                if position:
                    kwargs["position"] = position
                out = apigateway.get_usage(**kwargs)
                for day in (out.get("items") or {}).get(key_id, []):
                    days.append(max(day[0], 0) if day else 0)
                    if len(day) > 1:
                        remaining = max(day[1], 0)
                position = out.get("position")
                if not position:
                    break
            used, limit = sum(days), int(quota["limit"])
            usage = {
                "limit": limit,
                "used": used,
                "remaining": remaining if remaining is not None else max(limit - used, 0),
                "period": quota["period"],
                "period_start": start.isoformat(),
                "period_end": end.isoformat(),
                "billing_period_end": item.get("PeriodEnd"),
            }
    return json_response(
        200,
        {
            "user_name": username,
            "plan": profile.get("custom:plan_type") or "FREE",
            "subscription_status": item.get("SubscriptionStatus") if item else None,
            "cancel_at_period_end": bool(item.get("CancelAtPeriodEnd")) if item else False,
            "current_period_end": item.get("PeriodEnd") if item else None,
            "trial_end": item.get("TrialEnd") if item else None,
            "has_billing_account": bool(profile.get("custom:stripe_customer_id")),
            "api_key": api_key,
            "usage": usage,
        },
    )


# ---------------------------------------------------------------------------------------------
# 4. POST /stripe/webhook: paykey's calls for customer.subscription.deleted/.updated of a PRO
#    user (shared/src/handlers.rs stripe_webhook -> shared/src/flows/lifecycle.rs
#    handle_stripe_event -> sync_subscription_of -> converge -> apply_target), one after another:
#     1. DynamoDB GetItem(EVENT#id)             store.event_seen (handle_stripe_event)
#     2. Stripe Subscription.retrieve           payments.get_subscription (sync_subscription_of)
#        [DynamoDB Query(customer index)        is_paykeys, only when no item is a catalog price]
#     3. Cognito AdminGetUser                   subscriber (metadata user_id/user_name; without
#        [DynamoDB Query(customer index) first   metadata: find_account_by_customer)]
#     4. DynamoDB UpdateItem(lock account)      } account_keys::try_lock_with_key_lookup:
#     5. API Gateway GetApiKeys(nameQuery)      } side by side in paykey
#     6. Stripe Subscription.retrieve again     } under the lock (sync_subscription_of), unless
#                                               }   the record is > 1 s older than step 2
#     7. Cognito AdminGetUser again             } side by side in paykey
#        [DynamoDB GetItem(name-keyed record)   Locked::adopt_legacy, only without a record]
#        [Stripe Subscription.retrieve(recorded) converge, only when the record names another]
#        [API Gateway GetApiKey                 choose_key, when the recorded key has another name]
#     8. the key (apply_target):
#        - to a plan (PRO, or FREE when the free tier has a usage plan): GetUsagePlans(keyId),
#          then per other plan GetUsagePlanKey + DeleteUsagePlanKey, CreateUsagePlanKey
#          (place_in_plan), [GetUsage per key + UpdateUsage when that tier has a quota]
#        - no free usage plan: UpdateApiKey(enabled=false) | GetUsagePlans(keyId), per plan
#          GetUsagePlanKey + DeleteUsagePlanKey (revoke_keys; side by side in paykey)
#     9. Cognito AdminUpdateUserAttributes      users.set_plan (beside step 8 in paykey)
#    10. DynamoDB PutItem(account, LockToken)   store.put_account (releases the lock)
#    11. DynamoDB PutItem(EVENT#id)             store.mark_event
# ---------------------------------------------------------------------------------------------
def header(event, name):
    for k, v in (event.get("headers") or {}).items():
        if k.lower() == name.lower():
            return v
    return None


def item_lookup_keys(subscription):
    keys = []
    for item in subscription["items"]["data"]:
        price = item["price"]
        key = price.get("lookup_key")
        product = price.get("product")
        product = product if isinstance(product, str) else (product or {}).get("id")
        if not key and product and product.startswith("paykey_"):
            key = product[len("paykey_"):] or None
        keys.append(key)
    return keys


def tier_of_items(keys):
    for k in keys:
        for t in TIERS:
            if t.get("lookup_key") and (k == t["lookup_key"] or k in t.get("retired_lookup_keys", [])):
                return t
    return None


def account_by_customer(customer):
    out = ACCOUNTS.query(IndexName=CUSTOMER_INDEX, KeyConditionExpression="StripeCustomerId = :c",
                         ExpressionAttributeValues={":c": customer})
    return next((i for i in out.get("Items", []) if "UserSub" in i and "Type" in i), None)


def retrieve_subscription(sub_id):
    try:  # a plain dict from here on (a StripeObject is not one)
        return stripe.Subscription.retrieve(sub_id).to_dict()
    except stripe.InvalidRequestError as e:
        if getattr(e, "http_status", None) == 404:
            return None
        raise


def grants(status, past_due_since, t):
    """paykey's desired_plan: "paid", "free" or None (no change)."""
    if status in ("active", "trialing"):
        return "paid"
    if status == "past_due":
        return "paid" if t - (past_due_since or t) <= PAST_DUE_GRACE else "free"
    if status in ("canceled", "unpaid", "incomplete_expired", "paused"):
        return "free"
    return None


def plans_of(key_id):
    return [p["id"] for p in apigateway.get_usage_plans(keyId=key_id, limit=500).get("items", [])]


def detach(key_id, plan):
    try:  # asked first, as paykey does (moto answers 500 for a key not in the plan)
        apigateway.get_usage_plan_key(usagePlanId=plan, keyId=key_id)
    except apigateway.exceptions.NotFoundException:
        return
    apigateway.delete_usage_plan_key(usagePlanId=plan, keyId=key_id)


def detach_from_every_plan(key_id):
    for plan in plans_of(key_id):
        detach(key_id, plan)


def disable(key_id):
    try:
        apigateway.update_api_key(apiKey=key_id, patchOperations=[{"op": "replace", "path": "/enabled", "value": "false"}])
    except apigateway.exceptions.NotFoundException:
        pass


def move_into_plan(key_id, plan, fresh, named):
    """paykey's move_into_plan / place_in_plan."""
    current = [] if fresh else plans_of(key_id)
    for old in current:
        if old != plan:
            detach(key_id, old)
    if plan in current:
        return
    apigateway.create_usage_plan_key(usagePlanId=plan, keyId=key_id, keyType="API_KEY")
    tier = next((t for t in TIERS if t.get("usage_plan_id") == plan), None)
    quota = tier.get("quota") if tier else None
    if not quota or (fresh and not named):
        return
    start, end = quota_period(quota["period"], now().date())
    used = 0
    for k in {k["id"] for k in named} | {key_id}:
        try:
            out = apigateway.get_usage(usagePlanId=plan, keyId=k, startDate=start.isoformat(),
                                       endDate=end.isoformat(), limit=500)
            used += sum(max(d[0], 0) for d in (out.get("items") or {}).get(k, []) if d)
        except Exception:  # paykey counts a key it cannot read as 0
            pass
    apigateway.update_usage(usagePlanId=plan, keyId=key_id, patchOperations=[
        {"op": "replace", "path": "/remaining", "value": str(max(int(quota["limit"]) - used, 0))}])


def ensure_key(record, key_name, named):
    """paykey's ensure_key: (key id, created now)."""
    recorded = record.get("ApiKeyId")
    chosen = None
    if recorded:
        chosen = next((k for k in named if k["id"] == recorded), None)
        if chosen is None:
            try:
                chosen = apigateway.get_api_key(apiKey=recorded, includeValue=False)
            except apigateway.exceptions.NotFoundException:
                chosen = None
    if chosen is None:
        chosen = next((k for k in named if k.get("enabled")), None) or (named[0] if named else None)
    if chosen is None:
        k = apigateway.create_api_key(name=key_name, description="paykey API key", enabled=True)
        return k["id"], True
    if not chosen.get("enabled"):
        apigateway.update_api_key(apiKey=chosen["id"], patchOperations=[
            {"op": "replace", "path": "/enabled", "value": "true"}])
    for extra in named:
        if extra.get("enabled") and extra["id"] != chosen["id"]:
            disable(extra["id"])
            detach_from_every_plan(extra["id"])
    return chosen["id"], False


def sync_subscription(sub_id):
    """What paykey's sync_subscription_of does; returns the outcome's words."""
    read_started = now()
    state = retrieve_subscription(sub_id)
    if state is None:
        return "unknown subscription"
    keys = item_lookup_keys(state)
    customer = state["customer"] if isinstance(state["customer"], str) else state["customer"]["id"]
    if tier_of_items(keys) is None:
        recorded = account_by_customer(customer)
        if not (recorded and recorded.get("StripeSubscriptionId") == state["id"]):
            return "not a paykey subscription"
    metadata = state.get("metadata") or {}
    sub, username = metadata.get("user_id"), metadata.get("user_name")
    if not username:
        found = account_by_customer(customer)
        if found is None:  # paykey's further fallbacks for Python-era records are not made here
            return "unknown customer"
        sub, username = found["UserSub"], found["UserName"]
    profile = user_attributes(username)
    if profile is None or not profile.get("sub") or (sub and profile["sub"] != sub):
        return "unknown customer"
    sub = profile["sub"]
    key_name = f"{KEY_NAME_PREFIX}{sub}"

    token, t = str(uuid.uuid4()), now()
    ms = lambda d: int(d.timestamp() * 1000)  # noqa: E731
    try:
        locked = ACCOUNTS.update_item(
            Key={"UserID": sub},
            UpdateExpression="SET LockToken = :tok, LockUntil = :until",
            ConditionExpression="attribute_not_exists(LockUntil) OR LockUntil < :now",
            ExpressionAttributeValues={":tok": token, ":until": ms(t + LEASE), ":now": ms(t)},
            ReturnValues="ALL_NEW",
        )["Attributes"]
    except ACCOUNTS.meta.client.exceptions.ConditionalCheckFailedException:
        raise RuntimeError("the account is locked by another attempt (paykey would wait up to 5 s)")
    try:
        named, position = [], None
        while True:
            kwargs = dict(nameQuery=key_name, includeValues=False, limit=500)
            if position:
                kwargs["position"] = position
            out = apigateway.get_api_keys(**kwargs)
            named += [k for k in out.get("items", []) if k.get("name") == key_name]
            position = out.get("position")
            if not position or not out.get("items"):
                break
        has_record = "UserSub" in locked and "Type" in locked
        # paykey (UNCHANGED_MARGIN): the first read stands when the record was last written
        # more than a second before it began; otherwise it is read again under the lock
        written = locked.get("UpdatedAt")
        unchanged = has_record and written and (
            datetime.datetime.fromisoformat(written.replace("Z", "+00:00")) + datetime.timedelta(seconds=1) < read_started
        )
        if not unchanged:
            state = retrieve_subscription(sub_id)
        profile = user_attributes(username)
        if not has_record:  # paykey looks for a name-keyed record to adopt; read, not adopted here
            ACCOUNTS.get_item(Key={"UserID": username}, ConsistentRead=True)
        if profile is None or profile.get("sub") != sub:
            raise Answer(200, "the subscription's user no longer holds the name")
        if state is None:
            raise Answer(200, "unknown subscription")

        record = {k: v for k, v in locked.items() if k not in ("LockToken", "LockUntil")}
        if not has_record:
            record.update({"UserSub": sub, "Type": FREE["name"] if FREE else "FREE", "CancelAtPeriodEnd": False})
        record["UserName"] = username
        t = now()
        past_due_since = record.get("PastDueSince")
        past_due_since = datetime.datetime.fromisoformat(past_due_since.replace("Z", "+00:00")) if past_due_since else None
        recorded = record.get("StripeSubscriptionId")
        if recorded and recorded != state["id"]:
            current = retrieve_subscription(recorded)
            if current is not None and grants(current["status"], past_due_since, t) == "paid":
                state = current  # the recorded one stays in charge (paykey refunds a paid duplicate; not here)
        past_due_since = (past_due_since or t) if state["status"] == "past_due" else None
        access = grants(state["status"], past_due_since, t)
        items = state["items"]["data"]
        period_end = state.get("cancel_at") or max((i.get("current_period_end") or 0 for i in items), default=0) or None
        record.update({
            "StripeSubscriptionId": state["id"],
            "SubscriptionStatus": state["status"],
            "StripeCustomerId": customer,
            "CancelAtPeriodEnd": bool(state.get("cancel_at_period_end") or state.get("cancel_at")),
            "UpdatedAt": ts(t),
        })
        for name, value in (("PeriodEnd", from_epoch(period_end)), ("TrialEnd", from_epoch(state.get("trial_end"))),
                            ("PastDueSince", past_due_since)):
            if value is None:
                record.pop(name, None)
            else:
                record[name] = secs(value)
        tier = tier_of_items(item_lookup_keys(state)) if access == "paid" else None
        if access == "paid" and tier is None:
            tier = tier_named(record.get("SubscriptionPlan") or record["Type"])
            tier = tier if tier and tier.get("lookup_key") else None
            if tier is None:
                access = None  # pays for no tier of the catalog: plan unchanged
        if tier is not None:
            record["SubscriptionPlan"] = tier["name"]
        else:
            record.pop("SubscriptionPlan", None)

        if access == "paid":
            plan, usage_plan = tier["name"], tier["usage_plan_id"]
        elif access == "free":
            has_key = bool(record.get("ApiKeyId") or named)
            plan = FREE["name"] if FREE else "FREE"
            usage_plan = FREE.get("usage_plan_id") if FREE and has_key else None
        else:
            plan = None
        outcome = f"{username} unchanged"
        if plan is not None:
            previous = record.get("PreviousKeyId")
            if record.get("Type") != plan and previous and previous != record.get("ApiKeyId"):
                disable(previous)  # a tier change ends a rotation's grace (paykey's grace_through)
                detach_from_every_plan(previous)
            if record.get("Type") != plan:
                for k in ("PreviousKeyId", "PreviousKeyUntil", "PreviousKeyRemaining", "PreviousKeyPeriodStart"):
                    record.pop(k, None)
            if usage_plan:
                key_id, fresh = ensure_key(record, key_name, named)
                move_into_plan(key_id, usage_plan, fresh, named)
                record["ApiKeyId"] = key_id
            else:
                ids = [k["id"] for k in named]
                if record.get("ApiKeyId") and record["ApiKeyId"] not in ids:
                    ids.append(record["ApiKeyId"])
                for key_id in ids:
                    disable(key_id)
                    detach_from_every_plan(key_id)
            cognito.admin_update_user_attributes(UserPoolId=USER_POOL_ID, Username=username, UserAttributes=[
                {"Name": "custom:plan_type", "Value": plan},
                {"Name": "custom:stripe_customer_id", "Value": customer},
            ])
            record["Type"] = plan
            outcome = f"{username} is {plan}"
        ACCOUNTS.put_item(Item=record, ConditionExpression="LockToken = :tok",
                          ExpressionAttributeValues={":tok": token})
        return outcome
    except Exception as e:
        try:  # released, so a retry need not wait for the lease (paykey's account_keys::release)
            ACCOUNTS.update_item(Key={"UserID": sub}, UpdateExpression="REMOVE LockToken, LockUntil",
                                 ConditionExpression="LockToken = :tok", ExpressionAttributeValues={":tok": token})
        except Exception:
            pass
        if isinstance(e, Answer):
            return str(e)
        raise


def stripe_webhook(event):
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    try:
        verified = stripe.Webhook.construct_event(body, header(event, "Stripe-Signature"), WEBHOOK_SECRET)
    except (stripe.SignatureVerificationError, ValueError) as e:
        raise Answer(400, f"bad signature: {e}")
    event_id, kind = verified["id"], verified["type"]
    if "Item" in SESSIONS.get_item(Key={"SessionID": f"EVENT#{event_id}"}, ConsistentRead=True):
        return json_response(200, {"received": True, "outcome": "duplicate"})
    if kind.startswith("customer.subscription."):
        outcome = "processed: " + sync_subscription(verified["data"]["object"]["id"])
    else:
        outcome = f"ignored: event type {kind} not handled by the reference"
    SESSIONS.put_item(Item={
        "SessionID": f"EVENT#{event_id}",
        "RecordType": "stripe-event",
        "EventType": kind,
        "ExpiresAt": int((now() + EVENT_TTL).timestamp()),
    })
    return json_response(200, {"received": True, "outcome": outcome})


ROUTES = {
    "/checkout-sessions": create_checkout_session,
    "/create-api-key/{session_id}/{one_time_key}": create_api_key,
    "/account": get_account,
    "/stripe/webhook": stripe_webhook,
}


def handler(event):
    route = ROUTES.get(event.get("resource"))
    if route is None:
        return json_response(404, {"error": f"no route {event.get('resource')}"})
    try:
        return route(event)
    except Answer as e:
        return json_response(e.status, {"error": str(e)})
    except Exception as e:  # visible to the harness: never a 2xx
        traceback.print_exc()
        return json_response(500, {"error": f"{type(e).__name__}: {e}"})


while True:
    with urllib.request.urlopen(f"{API}/invocation/next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    body = json.dumps(handler(event), default=str).encode()
    urllib.request.urlopen(urllib.request.Request(f"{API}/invocation/{request_id}/response", data=body, method="POST")).read()
