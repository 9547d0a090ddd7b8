"""AWS managed keys through boto3 (issue 12, item 15): DescribeKey on alias/aws/rds creates the
key (KeyManager AWS, yearly rotation), ListAliases lists it with its TargetKeyId and the unused
predefined aliases without one, every change is refused with AWS's error, and kms:ViaService
(the s3gateway user's p11kms:ViaService tag) decides who may use alias/aws/s3."""

import json

from common import ACCOUNT, AK_ADMIN, check, expect_error, kms

AK_S3GATEWAY = "AKIAS3GATEWAY0000001"


def main():
    admin = kms(AK_ADMIN)
    gateway = kms(AK_S3GATEWAY)

    meta = admin.describe_key(KeyId="alias/aws/rds")["KeyMetadata"]
    check(meta["KeyManager"] == "AWS", f"KeyManager: {meta}")
    check(meta["KeyState"] == "Enabled", f"KeyState: {meta}")
    check(meta["Description"].startswith("Default key that protects my RDS"), f"{meta}")
    key = meta["KeyId"]
    rotation = admin.get_key_rotation_status(KeyId=key)
    check(rotation["KeyRotationEnabled"] and rotation["RotationPeriodInDays"] == 365,
          f"rotation: {rotation}")
    policy = json.loads(admin.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    via = policy["Statement"][0]["Condition"]["StringEquals"]
    check(via == {"kms:CallerAccount": ACCOUNT, "kms:ViaService": "rds.us-east-1.amazonaws.com"},
          f"policy condition: {via}")

    aliases = {a["AliasName"]: a for a in admin.list_aliases()["Aliases"]}
    check(aliases["alias/aws/rds"].get("TargetKeyId") == key, f"{aliases['alias/aws/rds']}")
    check("TargetKeyId" not in aliases["alias/aws/lambda"], f"{aliases['alias/aws/lambda']}")
    check(key in [k["KeyId"] for k in admin.list_keys(Limit=1000)["Keys"]], "ListKeys")

    denied = "AccessDeniedException"
    expect_error(admin, denied, admin.disable_key, KeyId=key)
    expect_error(admin, denied, admin.schedule_key_deletion, KeyId=key, PendingWindowInDays=7)
    expect_error(admin, denied, admin.put_key_policy, KeyId=key, PolicyName="default",
                 Policy=json.dumps(policy))
    expect_error(admin, denied, admin.enable_key_rotation, KeyId=key)
    expect_error(admin, denied, admin.disable_key_rotation, KeyId=key)
    expect_error(admin, denied, admin.rotate_key_on_demand, KeyId=key)
    expect_error(admin, denied, admin.delete_alias, AliasName="alias/aws/rds")
    mine = admin.create_key()["KeyMetadata"]["KeyId"]
    expect_error(admin, denied, admin.update_alias, AliasName="alias/aws/rds", TargetKeyId=mine)
    expect_error(admin, "InvalidAliasNameException", admin.create_alias,
                 AliasName="alias/aws/lambda", TargetKeyId=mine)
    check(admin.describe_key(KeyId="alias/aws/rds")["KeyMetadata"] == meta, "the key changed")

    # kms:ViaService: the S3 service principal may use alias/aws/s3, the admin may not.
    blob = gateway.encrypt(KeyId="alias/aws/s3", Plaintext=b"object")["CiphertextBlob"]
    check(gateway.decrypt(CiphertextBlob=blob)["Plaintext"] == b"object", "round trip")
    expect_error(admin, denied, admin.encrypt, KeyId="alias/aws/s3", Plaintext=b"x")
    expect_error(admin, denied, admin.decrypt, CiphertextBlob=blob)
    print("managed keys: ok")


main()
