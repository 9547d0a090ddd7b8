"""boto3 against p11kms: key users, a second user without KMS rights, cross-account use
through STS AssumeRole, modelled exception classes, and a sweep of the other operations.
Exits non-zero with a message on the first failure."""

import base64
import uuid

from common import (
    ACCOUNT, ADMIN, AK_ADMIN, AK_BOB, AK_KEYADMIN, AK_USER1, AK_USER2, ENGINEERING, KEYADMIN,
    OTHER_ACCOUNT, USER1, check, expect_error, fail, key_policy, key_users_policy, kms, sts,
)


def key_users():
    admin = kms(AK_ADMIN)
    policy = key_users_policy()
    meta = admin.create_key(Policy=policy, Description="boto3 key users")["KeyMetadata"]
    arn = meta["Arn"]
    check(arn == f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{meta['KeyId']}", f"bad ARN {arn}")
    check(meta["AWSAccountId"] == ACCOUNT, "AWSAccountId")
    ctx = {"app": "boto3", "tenant": "blue"}

    user1 = kms(AK_USER1)
    enc = user1.encrypt(KeyId=arn, Plaintext=b"for user1's eyes", EncryptionContext=ctx)
    check(enc["KeyId"] == arn, f"Encrypt KeyId {enc['KeyId']} is not the ARN")
    dec = user1.decrypt(CiphertextBlob=enc["CiphertextBlob"], EncryptionContext=ctx)
    check(dec["Plaintext"] == b"for user1's eyes", "user1 decrypt round trip")
    check(dec["KeyId"] == arn, "Decrypt KeyId is the ARN")
    dk = user1.generate_data_key(KeyId=arn, KeySpec="AES_256", EncryptionContext=ctx)
    check(len(dk["Plaintext"]) == 32 and dk["KeyId"] == arn, "GenerateDataKey")
    back = user1.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx, KeyId=arn)
    check(back["Plaintext"] == dk["Plaintext"], "data key decrypts")
    print("user1 (key user) encrypts and decrypts")

    user2 = kms(AK_USER2)
    e = expect_error(user2, "AccessDeniedException", user2.decrypt,
                     CiphertextBlob=enc["CiphertextBlob"], EncryptionContext=ctx, status=400)
    msg = e.response["Error"]["Message"]
    check("arn:aws:iam::111122223333:user/user2 is not authorized to perform: kms:Decrypt" in msg,
          f"AccessDenied message: {msg}")
    expect_error(user2, "AccessDeniedException", user2.encrypt, KeyId=arn, Plaintext=b"x")
    print("user2 (no KMS permissions) gets AccessDeniedException")
    return arn, enc["CiphertextBlob"], ctx


def cross_account():
    keyadmin = kms(AK_KEYADMIN)
    policy = key_policy([
        {"Sid": "KeyAdministrator", "Effect": "Allow", "Principal": {"AWS": KEYADMIN},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "AllowAccount111122223333", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
         "Resource": "*"},
    ])
    meta = keyadmin.create_key(Policy=policy)["KeyMetadata"]
    arn = meta["Arn"]
    check(meta["AWSAccountId"] == OTHER_ACCOUNT, "the shared key is in 444455556666")
    ctx = {"purpose": "xacct"}
    blob = keyadmin.encrypt(KeyId=arn, Plaintext=b"shared secret",
                            EncryptionContext=ctx)["CiphertextBlob"]

    # bob alone: his identity policy allows only sts:AssumeRole.
    bob_kms = kms(AK_BOB)
    expect_error(bob_kms, "AccessDeniedException", bob_kms.decrypt,
                 CiphertextBlob=blob, EncryptionContext=ctx, KeyId=arn)

    bob_sts = sts(AK_BOB)
    me = bob_sts.get_caller_identity()
    check(me["Arn"] == "arn:aws:iam::111122223333:user/bob", f"bob is {me['Arn']}")
    out = bob_sts.assume_role(RoleArn=ENGINEERING, RoleSessionName="boto3-xacct",
                              DurationSeconds=900,
                              Tags=[{"Key": "team", "Value": "blue"}])
    creds = out["Credentials"]
    check(creds["AccessKeyId"].startswith("ASIA"), "temporary access key id")
    check(out["AssumedRoleUser"]["Arn"]
          == f"arn:aws:sts::{ACCOUNT}:assumed-role/Engineering/boto3-xacct",
          f"assumed role user {out['AssumedRoleUser']}")
    check(hasattr(creds["Expiration"], "year"), "Expiration parses as a datetime")

    role_sts = sts(creds=creds)
    who = role_sts.get_caller_identity()
    check(who["Arn"] == out["AssumedRoleUser"]["Arn"], f"session caller {who['Arn']}")
    check(who["Account"] == ACCOUNT, "session account")

    role_kms = kms(creds=creds)
    dec = role_kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx, KeyId=arn)
    check(dec["Plaintext"] == b"shared secret", "the role session decrypts across accounts")
    check(dec["KeyId"] == arn, "cross-account Decrypt KeyId")
    enc = role_kms.encrypt(KeyId=arn, Plaintext=b"from the role", EncryptionContext=ctx)
    check(enc["KeyId"] == arn, "cross-account Encrypt KeyId")
    # A bare key id names a key in the caller's own account, where there is none.
    expect_error(role_kms, "NotFoundException", role_kms.describe_key, KeyId=meta["KeyId"],
                 status=400)

    # user1 may not assume Engineering (its trust policy names bob): STS's AccessDenied.
    user1_sts = sts(AK_USER1)
    try:
        user1_sts.assume_role(RoleArn=ENGINEERING, RoleSessionName="sneaky")
        fail("user1 assumed Engineering")
    except user1_sts.exceptions.ClientError as e:
        check(e.response["Error"]["Code"] == "AccessDenied", f"STS error {e.response['Error']}")
        check(e.response["ResponseMetadata"]["HTTPStatusCode"] == 403, "STS AccessDenied is 403")
    print("cross-account: bob assumes Engineering and uses 444455556666's key")


def modelled_errors_and_sweep():
    admin = kms(AK_ADMIN)
    ghost = str(uuid.uuid4())
    expect_error(admin, "NotFoundException", admin.describe_key, KeyId=ghost, status=400)
    expect_error(admin, "NotFoundException", admin.encrypt, KeyId="alias/no-such-alias",
                 Plaintext=b"x", status=400)
    meta = admin.create_key(Description="sweep")["KeyMetadata"]
    key, arn = meta["KeyId"], meta["Arn"]
    blob = admin.encrypt(KeyId=key, Plaintext=b"sweep")["CiphertextBlob"]
    expect_error(admin, "InvalidCiphertextException", admin.decrypt, CiphertextBlob=blob,
                 EncryptionContext={"not": "it"}, status=400)
    expect_error(admin, "ValidationException", admin.generate_random, NumberOfBytes=100000,
                 status=400)
    expect_error(admin, "InvalidAliasNameException", admin.create_alias,
                 AliasName="alias/aws/reserved", TargetKeyId=key)
    expect_error(admin, "MalformedPolicyDocumentException", admin.put_key_policy, KeyId=key,
                 PolicyName="default", Policy="{not json")

    admin.disable_key(KeyId=key)
    expect_error(admin, "DisabledException", admin.encrypt, KeyId=key, Plaintext=b"x",
                 status=400)
    admin.enable_key(KeyId=key)

    alias = f"alias/boto3-{key[:8]}"
    admin.create_alias(AliasName=alias, TargetKeyId=key)
    expect_error(admin, "AlreadyExistsException", admin.create_alias, AliasName=alias,
                 TargetKeyId=key, status=400)
    aliases = admin.list_aliases(KeyId=key)["Aliases"]
    check([a["AliasName"] for a in aliases] == [alias], f"ListAliases {aliases}")
    check(hasattr(aliases[0]["CreationDate"], "year"), "alias dates are datetimes")
    other = admin.create_key()["KeyMetadata"]["KeyId"]
    admin.update_alias(AliasName=alias, TargetKeyId=other)
    check(admin.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == other, "UpdateAlias")
    admin.delete_alias(AliasName=alias)

    re = admin.re_encrypt(CiphertextBlob=blob, DestinationKeyId=other)
    check(re["SourceKeyId"] == arn and re["KeyId"].endswith(other), f"ReEncrypt {re}")
    check(admin.decrypt(CiphertextBlob=re["CiphertextBlob"])["Plaintext"] == b"sweep",
          "ReEncrypt round trip")
    wp = admin.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=16)
    check("Plaintext" not in wp and wp["KeyId"] == arn, "GenerateDataKeyWithoutPlaintext")
    check(len(admin.generate_random(NumberOfBytes=24)["Plaintext"]) == 24, "GenerateRandom")

    admin.update_key_description(KeyId=key, Description="swept")
    check(admin.describe_key(KeyId=key)["KeyMetadata"]["Description"] == "swept",
          "UpdateKeyDescription")
    admin.tag_resource(KeyId=key, Tags=[{"TagKey": "env", "TagValue": "test"}])
    tags = admin.list_resource_tags(KeyId=key)["Tags"]
    check(tags == [{"TagKey": "env", "TagValue": "test"}], f"tags {tags}")
    admin.untag_resource(KeyId=key, TagKeys=["env"])
    check(admin.list_resource_tags(KeyId=key)["Tags"] == [], "UntagResource")
    check(admin.list_key_policies(KeyId=key)["PolicyNames"] == ["default"], "ListKeyPolicies")

    grant = admin.create_grant(KeyId=key, GranteePrincipal=USER1, RetiringPrincipal=ADMIN,
                               Operations=["Decrypt"],
                               Constraints={"EncryptionContextSubset": {"dept": "it"}})
    grants = admin.list_grants(KeyId=key)["Grants"]
    check(len(grants) == 1 and grants[0]["GrantId"] == grant["GrantId"], f"ListGrants {grants}")
    check(grants[0]["Constraints"] == {"EncryptionContextSubset": {"dept": "it"}},
          f"grant constraints {grants[0]}")
    root = f"arn:aws:iam::{ACCOUNT}:root"
    check(grants[0]["IssuingAccount"] == root, f"ListGrants IssuingAccount {grants[0]}")
    retirable = admin.list_retirable_grants(RetiringPrincipal=ADMIN)["Grants"]
    check(any(g["GrantId"] == grant["GrantId"] for g in retirable), "ListRetirableGrants")
    check(all(g["IssuingAccount"] == root for g in retirable),
          f"ListRetirableGrants IssuingAccount {retirable}")
    admin.retire_grant(GrantToken=grant["GrantToken"])
    g2 = admin.create_grant(KeyId=key, GranteePrincipal=USER1, Operations=["Encrypt"])
    admin.revoke_grant(KeyId=key, GrantId=g2["GrantId"])
    check(admin.list_grants(KeyId=key)["Grants"] == [], "grants retired and revoked")

    # Pagination as the SDK's paginator drives it.
    pages = admin.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 1})
    ids = [k["KeyId"] for page in pages for k in page["Keys"]]
    check(key in ids and other in ids and len(ids) == len(set(ids)), "ListKeys paginates")

    sched = admin.schedule_key_deletion(KeyId=other, PendingWindowInDays=7)
    check(sched["KeyState"] == "PendingDeletion", "ScheduleKeyDeletion")
    expect_error(admin, "KMSInvalidStateException", admin.encrypt, KeyId=other, Plaintext=b"x",
                 status=400)
    admin.cancel_key_deletion(KeyId=other)
    print("modelled exceptions and the operation sweep")


def main():
    key_users()
    cross_account()
    modelled_errors_and_sweep()
    print("boto3 checks passed")


if __name__ == "__main__":
    main()
