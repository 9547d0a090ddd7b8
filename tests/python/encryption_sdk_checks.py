"""The AWS Encryption SDK for Python against p11kms: a 1 MiB message encrypted and decrypted
with a strict KMS master key provider whose botocore session reaches p11kms through
AWS_ENDPOINT_URL_KMS and AWS_CA_BUNDLE; decryption by a principal without rights fails; the
encryption context round-trips exactly. Exits non-zero with a message on the first failure."""

import logging
import os

import aws_encryption_sdk
import botocore.session
from aws_encryption_sdk import CommitmentPolicy
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError

from common import (
    AK_ADMIN, AK_USER1, AK_USER2, check, fail, key_users_policy, kms, secret,
)


def provider(access_key_id, key_arn):
    session = botocore.session.Session()
    session.set_credentials(access_key_id, secret(access_key_id))
    session.set_config_variable("region", "us-east-1")
    return aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[key_arn], botocore_session=session
    )


def main():
    admin = kms(AK_ADMIN)
    policy = key_users_policy()
    arn = admin.create_key(Policy=policy, Description="esdk")["KeyMetadata"]["Arn"]

    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    message = os.urandom(1024 * 1024)
    context = {"purpose": "esdk-test", "tenant": "blue", "unicode": "gr\u00fc\u00dfe"}

    ciphertext, enc_header = client.encrypt(
        source=message, key_provider=provider(AK_USER1, arn), encryption_context=context
    )
    check(len(ciphertext) > len(message), "ciphertext is larger than the message")
    keys = [k.key_provider.key_info.decode() for k in enc_header.encrypted_data_keys]
    check(keys == [arn], f"the data key is wrapped by the p11kms key ARN: {keys}")
    print(f"encrypted 1 MiB: {len(ciphertext)} bytes, suite {enc_header.algorithm.name}")

    plaintext, dec_header = client.decrypt(source=ciphertext, key_provider=provider(AK_USER1, arn))
    check(plaintext == message, "the 1 MiB message round-trips")
    got = dec_header.encryption_context
    for k, v in context.items():
        check(got.get(k) == v, f"encryption context {k!r}: {got.get(k)!r} != {v!r}")
    extra = set(got) - set(context)
    check(extra <= {"aws-crypto-public-key"}, f"unexpected context members {extra}")
    check(got == enc_header.encryption_context, "decrypted header context equals the encrypted one")
    print(f"decrypted; the context round-trips exactly ({sorted(got)})")

    # The SDK reports "Unable to decrypt any data key"; the KMS error behind it is logged.
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    sdk_logger = logging.getLogger("aws_encryption_sdk")
    sdk_logger.addHandler(handler)
    sdk_logger.setLevel(logging.DEBUG)
    try:
        client.decrypt(source=ciphertext, key_provider=provider(AK_USER2, arn))
        fail("user2 (no rights on the key) decrypted the message")
    except AWSEncryptionSDKClientError as e:
        check(any("AccessDeniedException" in r for r in records),
              f"user2's failure is not an AccessDenied from p11kms: {e}; log: {records}")
        print(f"user2 cannot decrypt: {type(e).__name__} (AccessDeniedException)")
    print("aws encryption sdk checks passed")


if __name__ == "__main__":
    main()
