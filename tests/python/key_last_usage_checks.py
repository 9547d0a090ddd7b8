"""GetKeyLastUsage with boto3 (botocore knows the operation and parses its output): a new key
has an empty KeyLastUsage and TrackingStartDate = KeyCreationDate; Encrypt, then Decrypt,
become the last usage with the request id boto3 saw; a failed Decrypt changes nothing; an
alias name is refused. Exits non-zero with a message on the first failure."""

from common import AK_ADMIN, check, expect_error, kms


def main():
    admin = kms(AK_ADMIN)
    meta = admin.create_key(Description="boto3 last usage")["KeyMetadata"]
    key_id = meta["KeyId"]
    fresh = admin.get_key_last_usage(KeyId=key_id)
    check(fresh["KeyId"] == meta["Arn"], f"KeyId {fresh['KeyId']} is not the key ARN")
    check(fresh["KeyLastUsage"] == {}, f"a new key has usage {fresh['KeyLastUsage']}")
    check(fresh["KeyCreationDate"] == meta["CreationDate"], "KeyCreationDate")
    check(fresh["TrackingStartDate"] == fresh["KeyCreationDate"], "TrackingStartDate")
    print("a new key: empty KeyLastUsage, tracking from its creation")

    enc = admin.encrypt(KeyId=key_id, Plaintext=b"boto3 last usage")
    used = admin.get_key_last_usage(KeyId=meta["Arn"])["KeyLastUsage"]
    check(used["Operation"] == "Encrypt", f"after Encrypt: {used}")
    check(used["KmsRequestId"] == enc["ResponseMetadata"]["RequestId"], f"request id: {used}")
    check(used["CloudTrailEventId"], "no CloudTrailEventId")
    check(used["Timestamp"] >= fresh["KeyCreationDate"], "Timestamp")

    dec = admin.decrypt(CiphertextBlob=enc["CiphertextBlob"])
    used = admin.get_key_last_usage(KeyId=key_id)["KeyLastUsage"]
    check(used["Operation"] == "Decrypt", f"after Decrypt: {used}")
    check(used["KmsRequestId"] == dec["ResponseMetadata"]["RequestId"], f"request id: {used}")
    print("Encrypt, then Decrypt, are the last usage with their request ids")

    bad = bytearray(enc["CiphertextBlob"])
    bad[-1] ^= 1
    expect_error(admin, "InvalidCiphertextException", admin.decrypt, CiphertextBlob=bytes(bad))
    again = admin.get_key_last_usage(KeyId=key_id)["KeyLastUsage"]
    check(again == used, f"a failed Decrypt changed the usage: {again}")
    print("a failed Decrypt does not count")

    admin.create_alias(AliasName="alias/boto3-last-usage", TargetKeyId=key_id)
    expect_error(admin, "NotFoundException", admin.get_key_last_usage,
                 KeyId="alias/boto3-last-usage")
    print("alias names are refused")


if __name__ == "__main__":
    main()
