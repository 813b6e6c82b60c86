"""REFERENCE ONLY, not shipped: the original Python design's cold start, for the benchmarks.

The same three clients the original Chalice app created at init (boto3 DynamoDB, Cognito,
API Gateway; the stripe SDK configured with a key), then a minimal Lambda runtime loop
against AWS_LAMBDA_RUNTIME_API answering the first invocation.
"""
import json
import os
import urllib.request

import boto3  # noqa: E402  (timed: imports are part of the cold start)
import stripe

dynamodb = boto3.resource("dynamodb")
cognito = boto3.client("cognito-idp")
apigateway = boto3.client("apigateway")
stripe.api_key = os.environ["STRIPE_API_KEY"]
TABLE = dynamodb.Table(os.environ["DYNAMODB_STRIPE_TABLE"])

API = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime/invocation"


def handler(event):
    return {"statusCode": 204, "headers": {"Access-Control-Allow-Origin": os.environ["MY_DOMAIN"]}, "body": ""}


while True:
    with urllib.request.urlopen(f"{API}/next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    body = json.dumps(handler(event)).encode()
    urllib.request.urlopen(urllib.request.Request(f"{API}/{request_id}/response", data=body, method="POST")).read()
