"""Custom key stores through boto3 (issue 15, items 3 and 4): every error of the store
operations and of keys in a store, with AWS's exception names; the connection error codes a
real cause gives (a wrong password: INVALID_CREDENTIALS; an absent token: CLUSTER_NOT_FOUND);
DescribeCustomKeyStores by id, by name, all and paged; GenerateRandom on a store; a store key's
life cycle across a second module path.

The clusters (ids, trust anchors, passwords) come from the 0600 JSON file named by
P11KMS_CLUSTERS (written by tests/aws_clients.rs), never from argv: `real` and `copy` have a
token (`copy` through a second module path), `absent` has none, `f1`..`f7` and `extra` are
configured without a token (creating a store does not touch the device), `f1r` shares `f1`'s
trust anchor (a related cluster)."""

import json
import os
import time

import botocore.config

from common import AK_ADMIN, AK_USER1, check, expect_error, fail, session

with open(os.environ["P11KMS_CLUSTERS"], encoding="utf-8") as f:
    GIVEN = json.load(f)
CLUSTERS = GIVEN["clusters"]
WRONG_PASSWORD = GIVEN["wrong_password"]
FILLERS = ["f1", "f2", "f3", "f4", "f5", "f6", "f7"]
UNKNOWN_STORE = "cks-0123456789abcdef0"
UNCONFIGURED_CLUSTER = "cluster-zzzzzzzzzzz"
SHORT_PASSWORD = "Qx7"


def client(access_key_id):
    # No client-side validation: the 3-character password must reach the door, which must
    # refuse it itself (botocore would refuse it before sending).
    config = botocore.config.Config(parameter_validation=False)
    return session(access_key_id).client("kms", config=config)


def create(admin, name, cluster, anchor_of=None, password=None):
    c = CLUSTERS[cluster]
    return admin.create_custom_key_store(
        CustomKeyStoreName=name,
        CloudHsmClusterId=c["id"],
        TrustAnchorCertificate=CLUSTERS[anchor_of or cluster]["anchor"],
        KeyStorePassword=password or c["password"],
    )["CustomKeyStoreId"]


def store(admin, store_id):
    stores = admin.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"]
    check(len(stores) == 1 and stores[0]["CustomKeyStoreId"] == store_id, f"{stores}")
    return stores[0]


def all_stores(admin):
    answer = admin.describe_custom_key_stores()
    check(not answer["Truncated"], f"one page of all stores: {answer}")
    return answer["CustomKeyStores"]


def wait_state(admin, store_id, wanted, timeout=30):
    """Polls DescribeCustomKeyStores (bounded) until the store is `wanted`; only CONNECTING
    may come in between."""
    deadline = time.monotonic() + timeout
    while True:
        s = store(admin, store_id)
        state = s["ConnectionState"]
        if state == wanted:
            return s
        check(state == "CONNECTING", f"waiting for {wanted}, the store is {state}: {s}")
        if time.monotonic() > deadline:
            fail(f"store {store_id} still {state} after {timeout}s, expected {wanted}")
        time.sleep(0.1)


def connect(admin, store_id):
    check(admin.connect_custom_key_store(CustomKeyStoreId=store_id)["ResponseMetadata"],
          "ConnectCustomKeyStore answered")
    s = wait_state(admin, store_id, "CONNECTED")
    check("ConnectionErrorCode" not in s, f"a connected store has no error code: {s}")


def disconnect(admin, store_id):
    admin.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    # DisconnectCustomKeyStore returns once the store is DISCONNECTED.
    s = store(admin, store_id)
    check(s["ConnectionState"] == "DISCONNECTED", f"after DisconnectCustomKeyStore: {s}")


def store_key(admin, store_id, **kwargs):
    return admin.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id, **kwargs)


def check_no_echo(error, secret):
    message = error.response["Error"].get("Message", "")
    check(secret not in message, f"the error message echoes the password: {message}")


def create_errors(admin, user1):
    """CreateCustomKeyStore: each refusal, then ten stores, then the limit."""
    real = create(admin, "real-store", "real")
    check(real.startswith("cks-") and len(real) == 21, f"store id {real}")
    s = store(admin, real)
    check(s["ConnectionState"] == "DISCONNECTED", f"a new store: {s}")
    check(s["CustomKeyStoreType"] == "AWS_CLOUDHSM", f"{s}")
    check(s["CloudHsmClusterId"] == CLUSTERS["real"]["id"], f"{s}")
    check(s["TrustAnchorCertificate"] == CLUSTERS["real"]["anchor"], f"{s}")
    check(s["CustomKeyStoreName"] == "real-store" and "CreationDate" in s, f"{s}")
    check("KeyStorePassword" not in json.dumps(s, default=str), f"{s}")

    extra = CLUSTERS["extra"]
    expect_error(admin, "CloudHsmClusterNotFoundException", admin.create_custom_key_store,
                 CustomKeyStoreName="nowhere", CloudHsmClusterId=UNCONFIGURED_CLUSTER,
                 TrustAnchorCertificate=extra["anchor"], KeyStorePassword=extra["password"])
    expect_error(admin, "IncorrectTrustAnchorException", create, admin, "wrong-anchor",
                 "extra", anchor_of="real")
    expect_error(admin, "CloudHsmClusterInUseException", create, admin, "second-on-real",
                 "real")
    expect_error(admin, "CustomKeyStoreNameInUseException", create, admin, "real-store",
                 "extra")
    e = expect_error(admin, "ValidationException", create, admin, "short-password", "extra",
                     password=SHORT_PASSWORD, status=400)
    check_no_echo(e, SHORT_PASSWORD)
    expect_error(user1, "AccessDeniedException", create, user1, "by-user1", "extra")
    expect_error(user1, "AccessDeniedException", user1.describe_custom_key_stores)
    check(len(all_stores(admin)) == 1, "a refused CreateCustomKeyStore made a store")

    ids = {"real": real}
    for name in ["copy", "absent"] + FILLERS:
        ids[name] = create(admin, f"{name}-store", name)
    expect_error(admin, "LimitExceededException", create, admin, "eleventh", "extra")
    stores = all_stores(admin)
    check(sorted(s["CustomKeyStoreId"] for s in stores) == sorted(ids.values()),
          f"the ten stores: {stores}")
    check(all(s["ConnectionState"] == "DISCONNECTED" for s in stores), f"{stores}")
    return ids


def describe_checks(admin, ids):
    """DescribeCustomKeyStores by id, by name, all, paged; unknown ones."""
    by_name = admin.describe_custom_key_stores(CustomKeyStoreName="copy-store")
    check([s["CustomKeyStoreId"] for s in by_name["CustomKeyStores"]] == [ids["copy"]],
          f"by name: {by_name}")
    check(store(admin, ids["absent"])["CustomKeyStoreName"] == "absent-store", "by id")
    seen, marker = [], None
    for _ in range(len(ids) + 1):
        kwargs = {"Limit": 1} | ({"Marker": marker} if marker else {})
        page = admin.describe_custom_key_stores(**kwargs)
        check(len(page["CustomKeyStores"]) == 1, f"a page of one: {page}")
        seen.append(page["CustomKeyStores"][0]["CustomKeyStoreId"])
        if not page["Truncated"]:
            check("NextMarker" not in page, f"the last page: {page}")
            break
        marker = page["NextMarker"]
    check(sorted(seen) == sorted(ids.values()) and len(seen) == len(set(seen)),
          f"paging with Limit=1 gave {seen}")
    nf = "CustomKeyStoreNotFoundException"
    expect_error(admin, nf, admin.describe_custom_key_stores, CustomKeyStoreId=UNKNOWN_STORE)
    expect_error(admin, nf, admin.describe_custom_key_stores, CustomKeyStoreName="no-such")
    expect_error(admin, nf, admin.connect_custom_key_store, CustomKeyStoreId=UNKNOWN_STORE)
    expect_error(admin, nf, admin.disconnect_custom_key_store, CustomKeyStoreId=UNKNOWN_STORE)
    expect_error(admin, nf, admin.delete_custom_key_store, CustomKeyStoreId=UNKNOWN_STORE)
    expect_error(admin, nf, admin.update_custom_key_store, CustomKeyStoreId=UNKNOWN_STORE,
                 NewCustomKeyStoreName="renamed")
    expect_error(admin, nf, store_key, admin, UNKNOWN_STORE)
    expect_error(admin, nf, admin.generate_random, NumberOfBytes=16,
                 CustomKeyStoreId=UNKNOWN_STORE)


def disconnected_store_checks(admin, real):
    """A disconnected store makes no key and gives no random bytes."""
    invalid = "CustomKeyStoreInvalidStateException"
    expect_error(admin, invalid, store_key, admin, real)
    expect_error(admin, invalid, admin.generate_random, NumberOfBytes=16,
                 CustomKeyStoreId=real)


def connected_store_checks(admin, ids):
    """On the connected `real` store: its keys, the refusals a connected store gives, and
    what AWS refuses for custom key store keys. Returns the key and a ciphertext under it."""
    real = ids["real"]
    connect(admin, real)
    meta = store_key(admin, real, Description="in the real store")["KeyMetadata"]
    check(meta["Origin"] == "AWS_CLOUDHSM" and meta["CustomKeyStoreId"] == real, f"{meta}")
    check(meta["CloudHsmClusterId"] == CLUSTERS["real"]["id"], f"{meta}")
    check(meta["KeySpec"] == "SYMMETRIC_DEFAULT" and meta["KeyState"] == "Enabled", f"{meta}")
    key = meta["Arn"]
    described = admin.describe_key(KeyId=key)["KeyMetadata"]
    check(described["CustomKeyStoreId"] == real and described["CloudHsmClusterId"]
          == CLUSTERS["real"]["id"], f"DescribeKey of a store key: {described}")
    unsupported = "UnsupportedOperationException"
    expect_error(admin, unsupported, store_key, admin, real, KeySpec="RSA_2048")
    expect_error(admin, unsupported, admin.enable_key_rotation, KeyId=key)
    expect_error(admin, unsupported, admin.get_parameters_for_import, KeyId=key,
                 WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    blob = admin.encrypt(KeyId=key, Plaintext=b"on the real store")["CiphertextBlob"]
    check(admin.decrypt(CiphertextBlob=blob)["Plaintext"] == b"on the real store", "decrypt")
    # As AWS: data key pairs are not made under keys in custom key stores.
    expect_error(admin, "UnsupportedOperationException", admin.generate_data_key_pair,
                 KeyId=key, KeyPairSpec="RSA_2048")

    randoms = [admin.generate_random(NumberOfBytes=n, CustomKeyStoreId=real)["Plaintext"]
               for n in (1, 32, 1024)]
    check([len(r) for r in randoms] == [1, 32, 1024], "GenerateRandom on a store")
    again = admin.generate_random(NumberOfBytes=32, CustomKeyStoreId=real)["Plaintext"]
    check(again != randoms[1], "GenerateRandom on a store repeats itself")

    invalid = "CustomKeyStoreInvalidStateException"
    expect_error(admin, invalid, admin.update_custom_key_store, CustomKeyStoreId=real,
                 KeyStorePassword=CLUSTERS["real"]["password"])
    expect_error(admin, invalid, admin.update_custom_key_store, CustomKeyStoreId=real,
                 CloudHsmClusterId=CLUSTERS["extra"]["id"])
    expect_error(admin, invalid, admin.delete_custom_key_store, CustomKeyStoreId=real)
    expect_error(admin, "CustomKeyStoreNameInUseException", admin.update_custom_key_store,
                 CustomKeyStoreId=real, NewCustomKeyStoreName="copy-store")
    admin.update_custom_key_store(CustomKeyStoreId=real, NewCustomKeyStoreName="real-renamed")
    s = store(admin, real)
    check(s["CustomKeyStoreName"] == "real-renamed" and s["ConnectionState"] == "CONNECTED",
          f"renamed while connected: {s}")
    return key, blob


def across_stores(admin, ids, key, blob):
    """A key on the second module path's token; ReEncrypt between the two stores."""
    connect(admin, ids["copy"])
    other = store_key(admin, ids["copy"])["KeyMetadata"]
    check(other["CloudHsmClusterId"] == CLUSTERS["copy"]["id"], f"{other}")
    moved = admin.re_encrypt(CiphertextBlob=blob, DestinationKeyId=other["Arn"])
    check(moved["SourceKeyId"] == key and moved["KeyId"] == other["Arn"], f"{moved}")
    back = admin.decrypt(CiphertextBlob=moved["CiphertextBlob"])
    check(back["KeyId"] == other["Arn"] and back["Plaintext"] == b"on the real store",
          f"decrypt on the copy store: {back}")


def disconnect_checks(admin, real, key):
    """Disconnected: the key is Unavailable, crypto refused, describe works, deletion can be
    scheduled; no delete of the store."""
    spare = store_key(admin, real, Description="deleted while disconnected")["KeyMetadata"]
    disconnect(admin, real)
    meta = admin.describe_key(KeyId=key)["KeyMetadata"]
    check(meta["KeyState"] == "Unavailable", f"a disconnected store's key: {meta}")
    expect_error(admin, "KMSInvalidStateException", admin.encrypt, KeyId=key, Plaintext=b"x")
    expect_error(admin, "KMSInvalidStateException", admin.generate_data_key, KeyId=key,
                 KeySpec="AES_256")
    scheduled = admin.schedule_key_deletion(KeyId=spare["Arn"], PendingWindowInDays=7)
    check(scheduled["KeyState"] == "PendingDeletion", f"scheduled while disconnected: {scheduled}")
    meta = admin.describe_key(KeyId=spare["Arn"])["KeyMetadata"]
    check(meta["KeyState"] == "PendingDeletion", f"still PendingDeletion, disconnected: {meta}")
    expect_error(admin, "CustomKeyStoreHasCMKsException", admin.delete_custom_key_store,
                 CustomKeyStoreId=real)
    disconnected_store_checks(admin, real)


def connection_errors(admin, ids, key, blob):
    """A wrong password: FAILED with INVALID_CREDENTIALS (and no retry by Connect); an absent
    token: FAILED with CLUSTER_NOT_FOUND. The right password connects again."""
    real = ids["real"]
    e = expect_error(admin, "ValidationException", admin.update_custom_key_store,
                     CustomKeyStoreId=real, KeyStorePassword=SHORT_PASSWORD)
    check_no_echo(e, SHORT_PASSWORD)
    admin.update_custom_key_store(CustomKeyStoreId=real, KeyStorePassword=WRONG_PASSWORD)
    admin.connect_custom_key_store(CustomKeyStoreId=real)
    s = wait_state(admin, real, "FAILED")
    check(s.get("ConnectionErrorCode") == "INVALID_CREDENTIALS", f"a wrong password: {s}")
    expect_error(admin, "CustomKeyStoreInvalidStateException", admin.connect_custom_key_store,
                 CustomKeyStoreId=real)
    disconnect(admin, real)
    admin.update_custom_key_store(CustomKeyStoreId=real,
                                  KeyStorePassword=CLUSTERS["real"]["password"])
    connect(admin, real)
    check(admin.decrypt(CiphertextBlob=blob)["KeyId"] == key, "the old ciphertext decrypts")

    absent = ids["absent"]
    admin.connect_custom_key_store(CustomKeyStoreId=absent)
    s = wait_state(admin, absent, "FAILED")
    check(s.get("ConnectionErrorCode") == "CLUSTER_NOT_FOUND", f"an absent token: {s}")
    disconnect(admin, absent)


def update_and_delete(admin, ids):
    """UpdateCustomKeyStore's cluster rules; a deleted store frees a place under the limit."""
    f1, f2 = ids["f1"], ids["f2"]
    admin.update_custom_key_store(CustomKeyStoreId=f1, CloudHsmClusterId=CLUSTERS["f1r"]["id"])
    check(store(admin, f1)["CloudHsmClusterId"] == CLUSTERS["f1r"]["id"], "a related cluster")
    expect_error(admin, "CloudHsmClusterNotRelatedException", admin.update_custom_key_store,
                 CustomKeyStoreId=f2, CloudHsmClusterId=CLUSTERS["extra"]["id"])
    expect_error(admin, "CloudHsmClusterInUseException", admin.update_custom_key_store,
                 CustomKeyStoreId=f2, CloudHsmClusterId=CLUSTERS["f3"]["id"])
    expect_error(admin, "CloudHsmClusterNotFoundException", admin.update_custom_key_store,
                 CustomKeyStoreId=f2, CloudHsmClusterId=UNCONFIGURED_CLUSTER)
    check(store(admin, f2)["CloudHsmClusterId"] == CLUSTERS["f2"]["id"], "a refused update")

    expect_error(admin, "LimitExceededException", create, admin, "eleventh", "extra")
    admin.delete_custom_key_store(CustomKeyStoreId=ids["f7"])
    expect_error(admin, "CustomKeyStoreNotFoundException", admin.describe_custom_key_stores,
                 CustomKeyStoreId=ids["f7"])
    eleventh = create(admin, "eleventh", "extra")
    check(len(all_stores(admin)) == 10 and store(admin, eleventh)["ConnectionState"]
          == "DISCONNECTED", "a deleted store frees its place")


def main():
    admin = client(AK_ADMIN)
    user1 = client(AK_USER1)
    ids = create_errors(admin, user1)
    describe_checks(admin, ids)
    disconnected_store_checks(admin, ids["real"])
    key, blob = connected_store_checks(admin, ids)
    across_stores(admin, ids, key, blob)
    disconnect_checks(admin, ids["real"], key)
    connection_errors(admin, ids, key, blob)
    update_and_delete(admin, ids)
    scheduled = admin.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    check(scheduled["KeyState"] == "PendingDeletion", f"{scheduled}")
    disconnect(admin, ids["real"])
    meta = admin.describe_key(KeyId=key)["KeyMetadata"]
    check(meta["KeyState"] == "PendingDeletion", f"still PendingDeletion, disconnected: {meta}")
    expect_error(admin, "CustomKeyStoreHasCMKsException", admin.delete_custom_key_store,
                 CustomKeyStoreId=ids["real"])
    print("custom key store checks passed")


if __name__ == "__main__":
    main()
