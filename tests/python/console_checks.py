"""What the console's create-key wizard did, checked with boto3 (tests/console.rs runs it
between the browser phases): DescribeKey shows the wizard's choices; GetKeyPolicy is exactly
the policy the wizard showed for review, which is the policy AWS's console generates for a
symmetric key administered by admin and used by alice; alice encrypts under it; bob is denied.
Exits non-zero with a message on the first failure."""

import json
import os

from common import ACCOUNT, check, expect_error, kms

AK_ADMIN = "AKIACONSOLEADMIN0001"
AK_ALICE = "AKIACONSOLEALICE0001"
AK_BOB = "AKIACONSOLEBOB000001"
ADMIN = f"arn:aws:iam::{ACCOUNT}:user/admin"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"


def aws_console_policy():
    """The key policy AWS's console generates for a symmetric encryption key with key
    administrator ADMIN (who may delete the key) and key user ALICE (the KMS developer
    guide's "Default key policy", written out independently of the console's code)."""
    return {
        "Version": "2012-10-17",
        "Id": "key-consolepolicy-3",
        "Statement": [
            {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
             "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*",
             "Resource": "*"},
            {"Sid": "Allow access for Key Administrators", "Effect": "Allow",
             "Principal": {"AWS": ADMIN},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
                        "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
                        "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
                        "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand"],
             "Resource": "*"},
            {"Sid": "Allow use of the key", "Effect": "Allow", "Principal": {"AWS": ALICE},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                        "kms:DescribeKey"],
             "Resource": "*"},
            {"Sid": "Allow attachment of persistent resources", "Effect": "Allow",
             "Principal": {"AWS": ALICE},
             "Action": ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
             "Resource": "*",
             "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}},
        ],
    }


def check_key(admin, key_id):
    meta = admin.describe_key(KeyId=key_id)["KeyMetadata"]
    expected = {"KeyState": "Enabled", "KeySpec": "SYMMETRIC_DEFAULT",
                "KeyUsage": "ENCRYPT_DECRYPT", "Origin": "AWS_KMS",
                "Description": "made by the console end-to-end test"}
    for k, v in expected.items():
        check(meta.get(k) == v, f"DescribeKey {k} = {meta.get(k)!r}, expected {v!r}")
    aliases = admin.list_aliases(KeyId=key_id)["Aliases"]
    check([a["AliasName"] for a in aliases] == ["alias/console-e2e"], f"aliases {aliases}")
    tags = admin.list_resource_tags(KeyId=key_id)["Tags"]
    check(tags == [{"TagKey": "team", "TagValue": "console"}], f"tags {tags}")
    print(f"DescribeKey: {key_id} as the wizard chose it (alias, description, tags)")


def check_policy(admin, key_id):
    with open(os.environ["CONSOLE_WIZARD_POLICY"], encoding="utf-8") as f:
        shown = json.load(f)
    stored = json.loads(admin.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    check(stored == shown, f"GetKeyPolicy is not the wizard's policy:\n{stored}\n{shown}")
    check(stored == aws_console_policy(),
          f"the wizard's policy is not AWS's console policy:\n{json.dumps(stored, indent=1)}")
    print("GetKeyPolicy: exactly the wizard's policy, which is AWS's console policy "
          "naming admin as administrator and alice as user")


def main():
    key_id = os.environ["CONSOLE_KEY_ID"]
    admin = kms(AK_ADMIN)
    check_key(admin, key_id)
    check_policy(admin, key_id)

    alice = kms(AK_ALICE)
    blob = alice.encrypt(KeyId=key_id, Plaintext=b"console e2e")["CiphertextBlob"]
    check(alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"console e2e", "alice's round trip")
    print("alice (key user) encrypts and decrypts")

    bob = kms(AK_BOB)
    expect_error(bob, "AccessDeniedException", bob.encrypt, KeyId=key_id, Plaintext=b"no")
    print("bob (no statement allows him) gets AccessDeniedException")


if __name__ == "__main__":
    main()
