"""DryRun through boto3 (issue 12, item 2), in two phases that tests/aws_clients.rs runs around
its HSM-counter and store snapshots:

  setup    creates the keys, ciphertexts, signature, MAC and grant every operation needs, and
           writes them to $P11KMS_SCRATCH/dry_run_fixture.json;
  dry-run  calls each of the 15 operations with DryRun=True and expects DryRunOperationException
           (HTTP 412), then dry runs that would fail and expects the real call's error.

Exits non-zero with a message on the first failure."""

import base64
import json
import os
import sys

from common import (
    ADMIN, AK_ADMIN, AK_USER2, USER1, check, expect_error, fail, kms,
)

FIXTURE = os.path.join(os.environ["P11KMS_SCRATCH"], "dry_run_fixture.json")
MESSAGE = "The request would have succeeded, but the DryRun option is set."
BLOBS = ("blob", "disabled_blob", "rsa_blob", "signature", "mac", "peer")


def create(admin, spec, usage):
    return admin.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Arn"]


def setup():
    admin = kms(AK_ADMIN)
    f = {
        "sym": create(admin, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        "other_sym": create(admin, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        "disabled": create(admin, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        "rsa": create(admin, "RSA_2048", "ENCRYPT_DECRYPT"),
        "ecc": create(admin, "ECC_NIST_P256", "SIGN_VERIFY"),
        "hmac": create(admin, "HMAC_256", "GENERATE_VERIFY_MAC"),
        "agree": create(admin, "ECC_NIST_P256", "KEY_AGREEMENT"),
    }
    ctx = {"purpose": "dry run"}
    f["blob"] = admin.encrypt(KeyId=f["sym"], Plaintext=b"dry", EncryptionContext=ctx)[
        "CiphertextBlob"]
    f["disabled_blob"] = admin.encrypt(KeyId=f["disabled"], Plaintext=b"dry")["CiphertextBlob"]
    admin.disable_key(KeyId=f["disabled"])
    f["rsa_blob"] = admin.encrypt(KeyId=f["rsa"], Plaintext=b"dry",
                                  EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    f["signature"] = admin.sign(KeyId=f["ecc"], Message=b"m",
                                SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    f["mac"] = admin.generate_mac(KeyId=f["hmac"], Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    f["peer"] = admin.get_public_key(KeyId=f["agree"])["PublicKey"]
    g = admin.create_grant(KeyId=f["sym"], GranteePrincipal=USER1, RetiringPrincipal=ADMIN,
                           Operations=["Decrypt"])
    f["grant_id"], f["grant_token"] = g["GrantId"], g["GrantToken"]
    for k in BLOBS:
        f[k] = base64.b64encode(f[k]).decode()
    with open(FIXTURE, "w", encoding="utf-8") as out:
        json.dump(f, out)
    print("fixture written")


def dry(client, name, call, **kwargs):
    e = expect_error(client, "DryRunOperationException", call, DryRun=True, status=412, **kwargs)
    msg = e.response["Error"]["Message"]
    check(msg == MESSAGE, f"{name}: message {msg!r}")
    print(f"{name}: DryRunOperationException (412)")


def dry_runs(admin, f):
    ctx = {"purpose": "dry run"}
    dry(admin, "Encrypt", admin.encrypt, KeyId=f["sym"], Plaintext=b"x")
    dry(admin, "Decrypt", admin.decrypt, CiphertextBlob=f["blob"], EncryptionContext=ctx)
    dry(admin, "Decrypt (RSA)", admin.decrypt, CiphertextBlob=f["rsa_blob"], KeyId=f["rsa"],
        EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    dry(admin, "ReEncrypt", admin.re_encrypt, CiphertextBlob=f["blob"],
        SourceEncryptionContext=ctx, DestinationKeyId=f["other_sym"])
    dry(admin, "GenerateDataKey", admin.generate_data_key, KeyId=f["sym"], KeySpec="AES_256")
    dry(admin, "GenerateDataKeyWithoutPlaintext", admin.generate_data_key_without_plaintext,
        KeyId=f["sym"], NumberOfBytes=16)
    dry(admin, "GenerateDataKeyPair", admin.generate_data_key_pair, KeyId=f["sym"],
        KeyPairSpec="ECC_NIST_P256")
    dry(admin, "GenerateDataKeyPairWithoutPlaintext",
        admin.generate_data_key_pair_without_plaintext, KeyId=f["sym"], KeyPairSpec="RSA_2048")
    dry(admin, "Sign", admin.sign, KeyId=f["ecc"], Message=b"m",
        SigningAlgorithm="ECDSA_SHA_256")
    # A dry run never verifies: a signature of another message is not looked at.
    dry(admin, "Verify", admin.verify, KeyId=f["ecc"], Message=b"another message",
        Signature=f["signature"], SigningAlgorithm="ECDSA_SHA_256")
    dry(admin, "GenerateMac", admin.generate_mac, KeyId=f["hmac"], Message=b"m",
        MacAlgorithm="HMAC_SHA_256")
    dry(admin, "VerifyMac", admin.verify_mac, KeyId=f["hmac"], Message=b"another message",
        Mac=f["mac"], MacAlgorithm="HMAC_SHA_256")
    dry(admin, "DeriveSharedSecret", admin.derive_shared_secret, KeyId=f["agree"],
        KeyAgreementAlgorithm="ECDH", PublicKey=f["peer"])
    dry(admin, "CreateGrant", admin.create_grant, KeyId=f["sym"], GranteePrincipal=USER1,
        Operations=["Encrypt"])
    dry(admin, "RetireGrant", admin.retire_grant, GrantToken=f["grant_token"])
    dry(admin, "RevokeGrant", admin.revoke_grant, KeyId=f["sym"], GrantId=f["grant_id"])


def same_error(client, name, call, **kwargs):
    """A dry run that would fail gets the real call's error (the real call fails too, before
    the HSM)."""
    codes = []
    for dry_run in (True, False):
        try:
            call(DryRun=dry_run, **kwargs)
        except client.exceptions.ClientError as e:
            codes.append(e.response["Error"]["Code"])
            continue
        fail(f"{name} (DryRun={dry_run}) succeeded")
    check(codes[0] == codes[1], f"{name}: dry run {codes[0]}, real call {codes[1]}")
    print(f"{name}: {codes[0]} with and without DryRun")
    return codes[0]


def failing_dry_runs(admin, f):
    user2 = kms(AK_USER2)
    cases = [
        ("Decrypt by a user without permission", user2, user2.decrypt,
         {"CiphertextBlob": f["blob"], "EncryptionContext": {"purpose": "dry run"}},
         "AccessDeniedException"),
        ("RevokeGrant by a user without permission", user2, user2.revoke_grant,
         {"KeyId": f["sym"], "GrantId": f["grant_id"]}, "AccessDeniedException"),
        ("Encrypt under a disabled key", admin, admin.encrypt,
         {"KeyId": f["disabled"], "Plaintext": b"x"}, "DisabledException"),
        ("Decrypt of a ciphertext whose key is disabled", admin, admin.decrypt,
         {"CiphertextBlob": f["disabled_blob"]}, "DisabledException"),
        ("Decrypt with a KeyId that is not the ciphertext's key", admin, admin.decrypt,
         {"CiphertextBlob": f["blob"], "KeyId": f["other_sym"]}, "IncorrectKeyException"),
        ("Encrypt with a MAC key", admin, admin.encrypt,
         {"KeyId": f["hmac"], "Plaintext": b"x"}, "InvalidKeyUsageException"),
        ("GenerateMac with a signing key", admin, admin.generate_mac,
         {"KeyId": f["ecc"], "Message": b"m", "MacAlgorithm": "HMAC_SHA_256"},
         "InvalidKeyUsageException"),
        ("CreateGrant of an operation the key cannot do", admin, admin.create_grant,
         {"KeyId": f["sym"], "GranteePrincipal": USER1, "Operations": ["Sign"]},
         "ValidationException"),
    ]
    for name, client, call, kwargs, want in cases:
        got = same_error(client, name, call, **kwargs)
        check(got == want, f"{name}: {got}, expected {want}")


def dry_run_phase():
    with open(FIXTURE, encoding="utf-8") as fin:
        f = json.load(fin)
    for k in BLOBS:
        f[k] = base64.b64decode(f[k])
    admin = kms(AK_ADMIN)
    dry_runs(admin, f)
    failing_dry_runs(admin, f)
    grants = admin.list_grants(KeyId=f["sym"])["Grants"]
    check([g["GrantId"] for g in grants] == [f["grant_id"]], f"grants changed: {grants}")
    print("the grant is still there")


if __name__ == "__main__":
    phase = sys.argv[1] if len(sys.argv) > 1 else ""
    if phase == "setup":
        setup()
    elif phase == "dry-run":
        dry_run_phase()
    else:
        fail(f"usage: dry_run_checks.py setup|dry-run (got {phase!r})")
