"""External key stores through boto3 (issue 16, Part B): a daemon Y's AWS door holds an
EXTERNAL_KEY_STORE backed by daemon X's XKS door (tests/external_key_stores.rs runs both).

Usage: external_key_store_checks.py <phase>, phases run in order by the Rust test between its
own steps on X:

- `create`: every CreateCustomKeyStore refusal, the store, its description, connect, every
  CreateKey refusal, keys, the crypto operations (double encryption), a denied AWS principal;
  writes the state the next phases need to $P11KMS_XKS_STATE.
- `disabled`: the key disabled on X makes Y's crypto fail (KMSInvalidStateException).
- `failed`: X stopped: the store goes FAILED with XKS_PROXY_NOT_REACHABLE, requests fail fast.
- `recovered`: X restarted on the same port: the store reconnects by itself, old ciphertexts
  decrypt.
- `denied`: X restarted refusing Y's credential: XKS_PROXY_ACCESS_DENIED (watch and connect).

The proxy settings and the credential's secret come from the 0600 JSON file named by
P11KMS_XKS (never argv)."""

import base64
import json
import os
import sys
import time

import botocore.config

from common import ADMIN, AK_ADMIN, AK_USER1, USER1, check, expect_error, fail, key_policy, session

with open(os.environ["P11KMS_XKS"], encoding="utf-8") as f:
    GIVEN = json.load(f)
STATE_FILE = os.environ["P11KMS_XKS_STATE"]
ENDPOINT = GIVEN["endpoint"]
PATH = GIVEN["path"]
SECRET = GIVEN["secret"]
CREDENTIAL = {"AccessKeyId": GIVEN["access_key_id"], "RawSecretAccessKey": SECRET}
CONTEXT = {"purpose": "xks-test"}


def client(access_key_id):
    # No client-side validation: malformed members must reach the door, which refuses them.
    config = botocore.config.Config(parameter_validation=False)
    return session(access_key_id).client("kms", config=config)


def no_secret(what, value):
    check(SECRET not in json.dumps(value, default=str), f"{what} echoes the proxy secret")


def create(admin, name, **overrides):
    args = {
        "CustomKeyStoreName": name,
        "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
        "XksProxyUriEndpoint": ENDPOINT,
        "XksProxyUriPath": PATH,
        "XksProxyAuthenticationCredential": CREDENTIAL,
        "XksProxyConnectivity": "PUBLIC_ENDPOINT",
    }
    args.update(overrides)
    args = {k: v for k, v in args.items() if v is not None}
    return admin.create_custom_key_store(**args)["CustomKeyStoreId"]


def store(admin, store_id):
    stores = admin.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"]
    check(len(stores) == 1, f"{stores}")
    no_secret("DescribeCustomKeyStores", stores)
    return stores[0]


def wait_state(admin, store_id, wanted, timeout, code=None):
    """Polls (bounded) until the store is `wanted` (with error code `code`)."""
    deadline = time.monotonic() + timeout
    while True:
        s = store(admin, store_id)
        if s["ConnectionState"] == wanted and s.get("ConnectionErrorCode") == code:
            return s
        if time.monotonic() > deadline:
            fail(f"store {store_id} is {s} after {timeout}s, expected {wanted} {code}")
        time.sleep(0.2)


def refused(admin, exception, **overrides):
    e = expect_error(admin, exception, create, admin, "refused", **overrides)
    no_secret(f"the {exception} message", e.response)


def create_errors(admin):
    """CreateCustomKeyStore: each validation error, VPC connectivity, and each proxy check."""
    bad_secret = {"AccessKeyId": GIVEN["access_key_id"], "RawSecretAccessKey": "short"}
    bad_id = {"AccessKeyId": "lowercase-id-0000000000", "RawSecretAccessKey": SECRET}
    wrong = {"AccessKeyId": GIVEN["access_key_id"], "RawSecretAccessKey": "W" * 43}
    for overrides in [
        {"XksProxyUriEndpoint": "ftp://127.0.0.1:1"},
        {"XksProxyUriEndpoint": "http://xks.example.com"},
        {"XksProxyUriPath": "/kms/xks/v123"},
        {"XksProxyUriPath": "no-slash/kms/xks/v1"},
        {"XksProxyAuthenticationCredential": bad_secret},
        {"XksProxyAuthenticationCredential": bad_id},
        {"XksProxyAuthenticationCredential": None},
        {"XksProxyConnectivity": None},
        {"XksProxyUriEndpoint": None},
        {"XksProxyConnectivity": "VPC_ENDPOINT_SERVICE"},
        {"KeyStorePassword": "a-cloudhsm-password"},
    ]:
        refused(admin, "ValidationException", **overrides)
    refused(admin, "XksProxyVpcEndpointServiceNotFoundException",
            XksProxyConnectivity="VPC_ENDPOINT_SERVICE",
            XksProxyVpcEndpointServiceName="com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abc")
    refused(admin, "XksProxyUriUnreachableException", XksProxyUriEndpoint=GIVEN["closed_endpoint"])
    refused(admin, "XksProxyIncorrectAuthenticationCredentialException",
            XksProxyAuthenticationCredential=wrong)
    refused(admin, "XksProxyInvalidConfigurationException", XksProxyUriPath="/nowhere/kms/xks/v1")
    refused(admin, "UnsupportedOperationException", XksProxyVpcEndpointServiceOwner="123456789012")
    check(not admin.describe_custom_key_stores()["CustomKeyStores"], "a refused store was kept")


def store_life(admin):
    store_id = create(admin, "xks-store")
    s = store(admin, store_id)
    check(s["CustomKeyStoreType"] == "EXTERNAL_KEY_STORE", f"{s}")
    check(s["ConnectionState"] == "DISCONNECTED", f"{s}")
    check("CloudHsmClusterId" not in s and "TrustAnchorCertificate" not in s, f"{s}")
    check(s["XksProxyConfiguration"] == {
        "Connectivity": "PUBLIC_ENDPOINT", "AccessKeyId": GIVEN["access_key_id"],
        "UriEndpoint": ENDPOINT, "UriPath": PATH}, f"{s}")
    expect_error(admin, "XksProxyUriInUseException", create, admin, "same-uri")
    expect_error(admin, "CustomKeyStoreNameInUseException", create, admin, "xks-store",
                 XksProxyUriPath="/other/kms/xks/v1")
    expect_error(admin, "CustomKeyStoreInvalidStateException", admin.create_key,
                 Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id,
                 XksKeyId=GIVEN["xks_key"])
    admin.connect_custom_key_store(CustomKeyStoreId=store_id)
    s = wait_state(admin, store_id, "CONNECTED", 15)
    # A new name while connected; a new URI needs DISCONNECTED.
    admin.update_custom_key_store(CustomKeyStoreId=store_id, NewCustomKeyStoreName="xks-main")
    expect_error(admin, "CustomKeyStoreInvalidStateException", admin.update_custom_key_store,
                 CustomKeyStoreId=store_id, XksProxyUriPath="/other/kms/xks/v1")
    expect_error(admin, "ValidationException", admin.update_custom_key_store,
                 CustomKeyStoreId=store_id, KeyStorePassword="a-cloudhsm-password")
    check(store(admin, store_id)["CustomKeyStoreName"] == "xks-main", "renamed")
    return store_id


def key_policy_with_user1():
    return key_policy([
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": ADMIN},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "User1", "Effect": "Allow", "Principal": {"AWS": USER1},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*"},
    ])


def external_key(admin, store_id, xks_key):
    m = admin.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id,
                         XksKeyId=xks_key, Policy=key_policy_with_user1())["KeyMetadata"]
    check(m["Origin"] == "EXTERNAL_KEY_STORE" and m["KeySpec"] == "SYMMETRIC_DEFAULT", f"{m}")
    check(m["XksKeyConfiguration"] == {"Id": xks_key}, f"{m}")
    check(m["CustomKeyStoreId"] == store_id and "CloudHsmClusterId" not in m, f"{m}")
    check(m["KeyState"] == "Enabled", f"{m}")
    return m["KeyId"]


def create_key_errors(admin, store_id):
    for xks_key, exception in [
        ("no-such-external-key", "XksKeyNotFoundException"),
        (GIVEN["rsa_key"], "XksKeyInvalidConfigurationException"),
        (GIVEN["xks_key"], "XksKeyAlreadyInUseException"),
    ]:
        expect_error(admin, exception, admin.create_key, Origin="EXTERNAL_KEY_STORE",
                     CustomKeyStoreId=store_id, XksKeyId=xks_key)
    expect_error(admin, "ValidationException", admin.create_key, Origin="EXTERNAL_KEY_STORE",
                 CustomKeyStoreId=store_id)
    expect_error(admin, "UnsupportedOperationException", admin.create_key,
                 Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)


def crypto(admin, key_id):
    """Encrypt, Decrypt, ReEncrypt (to itself, to a default-store key and back) and data
    keys, all through the double encryption."""
    plaintext = b"external key store plaintext " * 100
    blob = admin.encrypt(KeyId=key_id, Plaintext=plaintext,
                         EncryptionContext=CONTEXT)["CiphertextBlob"]
    check(plaintext not in blob, "the plaintext is in the ciphertext")
    d = admin.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
    check(d["Plaintext"] == plaintext and d["KeyId"].endswith(key_id), f"{d['KeyId']}")
    expect_error(admin, "InvalidCiphertextException", admin.decrypt, CiphertextBlob=blob,
                 EncryptionContext={"purpose": "other"})
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    expect_error(admin, "InvalidCiphertextException", admin.decrypt,
                 CiphertextBlob=bytes(tampered), EncryptionContext=CONTEXT)
    local = admin.create_key()["KeyMetadata"]["KeyId"]
    again = admin.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext=CONTEXT,
                             DestinationKeyId=key_id, DestinationEncryptionContext=CONTEXT)
    out = admin.re_encrypt(CiphertextBlob=again["CiphertextBlob"],
                           SourceEncryptionContext=CONTEXT, DestinationKeyId=local)
    back = admin.re_encrypt(CiphertextBlob=out["CiphertextBlob"], DestinationKeyId=key_id)
    d = admin.decrypt(CiphertextBlob=back["CiphertextBlob"])
    check(d["Plaintext"] == plaintext, "ReEncrypt out of and back into the external key")
    dk = admin.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=CONTEXT)
    d = admin.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=CONTEXT)
    check(d["Plaintext"] == dk["Plaintext"] and len(dk["Plaintext"]) == 32, "data key")
    wp = admin.generate_data_key_without_plaintext(KeyId=key_id, NumberOfBytes=64)
    check(len(admin.decrypt(CiphertextBlob=wp["CiphertextBlob"])["Plaintext"]) == 64, "64 B")
    # As AWS: data key pairs are not made under keys in custom key stores.
    for call in (admin.generate_data_key_pair, admin.generate_data_key_pair_without_plaintext):
        expect_error(admin, "UnsupportedOperationException", call,
                     KeyId=key_id, KeyPairSpec="ECC_NIST_P256")
    expect_error(admin, "UnsupportedOperationException", admin.generate_random,
                 NumberOfBytes=16, CustomKeyStoreId=key_store_of(admin, key_id))
    return plaintext, blob


def key_store_of(admin, key_id):
    return admin.describe_key(KeyId=key_id)["KeyMetadata"]["CustomKeyStoreId"]


def phase_create():
    admin = client(AK_ADMIN)
    create_errors(admin)
    store_id = store_life(admin)
    key_id = external_key(admin, store_id, GIVEN["xks_key"])
    create_key_errors(admin, store_id)
    plaintext, blob = crypto(admin, key_id)
    # X's key policy allows only Y's admin as the AWS caller: Y's user1, allowed by Y's key
    # policy, is refused by the proxy's secondary authorization.
    user1 = client(AK_USER1)
    expect_error(user1, "KMSInvalidStateException", user1.encrypt, KeyId=key_id,
                 Plaintext=b"x")
    expect_error(user1, "KMSInvalidStateException", user1.decrypt, CiphertextBlob=blob,
                 EncryptionContext=CONTEXT)
    to_disable = external_key(admin, store_id, GIVEN["xks_key_to_disable"])
    admin.encrypt(KeyId=to_disable, Plaintext=b"works before it is disabled on X")
    state = {"store": store_id, "key": key_id, "to_disable": to_disable,
             "plaintext": base64.b64encode(plaintext).decode(),
             "blob": base64.b64encode(blob).decode(), "context": CONTEXT}
    with open(STATE_FILE, "w", encoding="utf-8") as f:
        json.dump(state, f)


def state():
    with open(STATE_FILE, encoding="utf-8") as f:
        return json.load(f)


def phase_disabled():
    admin, s = client(AK_ADMIN), state()
    expect_error(admin, "KMSInvalidStateException", admin.encrypt, KeyId=s["to_disable"],
                 Plaintext=b"x")
    m = admin.describe_key(KeyId=s["to_disable"])["KeyMetadata"]
    check(m["KeyState"] == "Enabled", f"the KMS key itself stays Enabled: {m}")
    admin.encrypt(KeyId=s["key"], Plaintext=b"the other external key still works")


def phase_failed():
    admin, s = client(AK_ADMIN), state()
    wait_state(admin, s["store"], "FAILED", 20, code="XKS_PROXY_NOT_REACHABLE")
    for call, kwargs in [
        (admin.encrypt, {"KeyId": s["key"], "Plaintext": b"x"}),
        (admin.decrypt, {"CiphertextBlob": base64.b64decode(s["blob"]),
                         "EncryptionContext": s["context"]}),
    ]:
        started = time.monotonic()
        expect_error(admin, "KMSInvalidStateException", call, **kwargs)
        took = time.monotonic() - started
        check(took < 2.0, f"{call.__name__} on a FAILED store took {took:.2f}s")
    m = admin.describe_key(KeyId=s["key"])["KeyMetadata"]
    check(m["KeyState"] == "Unavailable", f"{m}")


def phase_recovered():
    admin, s = client(AK_ADMIN), state()
    wait_state(admin, s["store"], "CONNECTED", 60)
    d = admin.decrypt(CiphertextBlob=base64.b64decode(s["blob"]),
                      EncryptionContext=s["context"])
    check(base64.b64encode(d["Plaintext"]).decode() == s["plaintext"], "decrypt after recovery")


def phase_denied():
    admin, s = client(AK_ADMIN), state()
    # The watch finds the proxy refusing the credential by itself ...
    wait_state(admin, s["store"], "FAILED", 60, code="XKS_PROXY_ACCESS_DENIED")
    # ... and so does a connection attempt (a refused credential needs the administrator).
    admin.disconnect_custom_key_store(CustomKeyStoreId=s["store"])
    admin.connect_custom_key_store(CustomKeyStoreId=s["store"])
    wait_state(admin, s["store"], "FAILED", 15, code="XKS_PROXY_ACCESS_DENIED")
    expect_error(admin, "CustomKeyStoreInvalidStateException", admin.connect_custom_key_store,
                 CustomKeyStoreId=s["store"])
    admin.disconnect_custom_key_store(CustomKeyStoreId=s["store"])


PHASES = {"create": phase_create, "disabled": phase_disabled, "failed": phase_failed,
          "recovered": phase_recovered, "denied": phase_denied}

if __name__ == "__main__":
    PHASES[sys.argv[1]]()
    print(f"external key store checks, phase {sys.argv[1]}: ok")
