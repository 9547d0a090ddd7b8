"""Shared helpers of the AWS-client checks: credentials from the test fixtures, clients that
reach p11kms through AWS_ENDPOINT_URL_KMS / AWS_ENDPOINT_URL_STS and trust AWS_CA_BUNDLE
(set by tests/aws_clients.rs), and a failure that names what went wrong."""

import json
import os
import sys

import boto3

ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
ADMIN = "arn:aws:iam::111122223333:user/admin"
USER1 = "arn:aws:iam::111122223333:user/user1"
USER2 = "arn:aws:iam::111122223333:user/user2"
KEYADMIN = "arn:aws:iam::444455556666:user/keyadmin"
ENGINEERING = "arn:aws:iam::111122223333:role/Engineering"

AK_ADMIN = "AKIAADMIN00000000001"
AK_USER1 = "AKIAUSER100000000001"
AK_USER2 = "AKIAUSER200000000001"
AK_BOB = "AKIABOB0000000000001"
AK_KEYADMIN = "AKIAKEYADMIN00000001"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def secret(access_key_id):
    with open(os.environ["P11KMS_FIXTURE_CREDENTIALS"], encoding="utf-8") as f:
        keys = json.load(f)["AccessKeys"]
    for k in keys:
        if k["AccessKeyId"] == access_key_id:
            return k["SecretAccessKey"]
    fail(f"no fixture access key {access_key_id}")


def session(access_key_id=None, creds=None):
    """A boto3 session for a fixture access key, or for AssumeRole credentials."""
    if creds is not None:
        return boto3.session.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name="us-east-1",
        )
    return boto3.session.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret(access_key_id),
        region_name="us-east-1",
    )


def kms(access_key_id=None, creds=None):
    # No endpoint_url and no verify here: AWS_ENDPOINT_URL_KMS and AWS_CA_BUNDLE from the
    # environment, exactly as the README tells users.
    return session(access_key_id, creds).client("kms")


def sts(access_key_id=None, creds=None):
    return session(access_key_id, creds).client("sts")


def key_policy(statements):
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def key_users_policy():
    """The key policy in which ADMIN administers the key and USER1 uses it (encrypt, decrypt,
    data keys, describe)."""
    return key_policy([
        {"Sid": "KeyAdministrators", "Effect": "Allow", "Principal": {"AWS": ADMIN},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "KeyUsers", "Effect": "Allow", "Principal": {"AWS": USER1},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
         "Resource": "*"},
    ])


def expect_error(client, exception_name, call, *args, status=None, **kwargs):
    """Calls `call` and checks it raises the modelled exception class `exception_name`
    (`client.exceptions.<Name>`). AccessDeniedException and ValidationException are not in
    KMS's service model (they are AWS-wide errors), so botocore raises them as a ClientError
    carrying that code."""
    if exception_name in ("AccessDeniedException", "ValidationException"):
        cls = client.exceptions.ClientError
    else:
        cls = getattr(client.exceptions, exception_name)
    try:
        call(*args, **kwargs)
    except cls as e:
        code = e.response["Error"]["Code"]
        check(code == exception_name, f"error code {code} is not {exception_name}")
        got = e.response["ResponseMetadata"]["HTTPStatusCode"]
        if status is not None:
            check(got == status, f"{exception_name}: HTTP {got}, expected {status}")
        check(e.response["ResponseMetadata"].get("RequestId"), "no request id on the error")
        return e
    except Exception as e:  # noqa: BLE001 - any other outcome is the failure reported
        fail(f"{call.__name__}: expected {exception_name}, got {type(e).__name__}: {e}")
    fail(f"{call.__name__}: expected {exception_name}, but the call succeeded")
