"""A Cognito user pool and app client on moto_server made from template.yaml's own
`UserPool` and `UserPoolClient` properties (not a copy of them), named as paykey-local's AWS
backend finds them (`PAYKEY_AWS_PREFIX`).

    python pool_from_template.py <moto url> <name>   →   {"user_pool_id": …, "client_id": …}

The CloudFormation properties are passed to CreateUserPool / CreateUserPoolClient under the
API's names (UserPoolName → PoolName, ClientName and UserPoolId set here); botocore validates
them against the API model, so a template property the API does not know fails here instead
of being dropped. Intrinsic functions are refused for the same reason.
"""
import json
import sys
from pathlib import Path

import boto3
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]


def plain(props, resource):
    """The properties as plain JSON, with no intrinsic function left in them."""
    text = json.dumps(props)
    if '"Fn::' in text or '"Ref"' in text:
        sys.exit(f"{resource}: an intrinsic function in properties this script passes on: {text}")
    return json.loads(text)


def main():
    moto, name = sys.argv[1], sys.argv[2]
    resources = cfn_yaml.load(str(ROOT / "template.yaml"))["Resources"]
    pool = dict(resources["UserPool"]["Properties"])
    pool.pop("UserPoolName")
    client = dict(resources["UserPoolClient"]["Properties"])
    client.pop("UserPoolId")
    client.pop("ClientName")
    idp = boto3.client(
        "cognito-idp", endpoint_url=moto, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    pool_id = idp.create_user_pool(PoolName=name, **plain(pool, "UserPool"))["UserPool"]["Id"]
    client_id = idp.create_user_pool_client(
        UserPoolId=pool_id, ClientName=name, **plain(client, "UserPoolClient")
    )["UserPoolClient"]["ClientId"]
    print(json.dumps({"user_pool_id": pool_id, "client_id": client_id}))


if __name__ == "__main__":
    main()
