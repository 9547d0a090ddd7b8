"""Multi-Region keys through boto3, on two p11kms Regions (tests/regions.rs starts them):
us-east-1 at P11KMS_ENDPOINT_US_EAST_1 and eu-west-1 at P11KMS_ENDPOINT_EU_WEST_1. A primary
is made in us-east-1 and replicated to eu-west-1; ciphertexts, data keys and re-encryptions
made in either Region open in the other, and both Regions describe the same
MultiRegionConfiguration."""

import os

import boto3

from common import ACCOUNT, AK_ADMIN, check, expect_error, secret

US = "us-east-1"
EU = "eu-west-1"


def client(region):
    endpoint = os.environ["P11KMS_ENDPOINT_" + region.upper().replace("-", "_")]
    return boto3.session.Session(
        aws_access_key_id=AK_ADMIN,
        aws_secret_access_key=secret(AK_ADMIN),
        region_name=region,
    ).client("kms", endpoint_url=endpoint)


def main():
    us, eu = client(US), client(EU)
    made = us.create_key(MultiRegion=True, Description="boto3 multi-Region primary")["KeyMetadata"]
    key_id = made["KeyId"]
    check(key_id.startswith("mrk-") and len(key_id) == 36, f"not an mrk- id: {key_id}")
    check(made["MultiRegion"] is True, f"MultiRegion: {made}")
    config = made["MultiRegionConfiguration"]
    check(config["MultiRegionKeyType"] == "PRIMARY", f"{config}")
    check(config["PrimaryKey"] == {"Arn": made["Arn"], "Region": US}, f"{config}")
    check(config["ReplicaKeys"] == [], f"{config}")

    replicated = us.replicate_key(
        KeyId=key_id, ReplicaRegion=EU, Description="the eu-west-1 replica",
        Tags=[{"TagKey": "site", "TagValue": "dr"}],
    )
    replica = replicated["ReplicaKeyMetadata"]
    check(replica["KeyId"] == key_id, f"{replica}")
    check(replica["Arn"] == f"arn:aws:kms:{EU}:{ACCOUNT}:key/{key_id}", f"{replica}")
    check(replica["Description"] == "the eu-west-1 replica", f"{replica}")
    check(replica["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA", f"{replica}")
    check(replicated["ReplicaTags"] == [{"TagKey": "site", "TagValue": "dr"}], f"{replicated}")
    check("Statement" in replicated["ReplicaPolicy"], f"{replicated}")

    # Both Regions show the same configuration; only the key type differs.
    for c, kind in ((us, "PRIMARY"), (eu, "REPLICA")):
        m = c.describe_key(KeyId=key_id)["KeyMetadata"]
        cfg = m["MultiRegionConfiguration"]
        check(cfg["MultiRegionKeyType"] == kind, f"{cfg}")
        check(cfg["PrimaryKey"]["Region"] == US, f"{cfg}")
        check([r["Region"] for r in cfg["ReplicaKeys"]] == [EU], f"{cfg}")

    # Ciphertexts open in the other Region, both ways, with the encryption context bound.
    ec = {"purpose": "multi-region"}
    for here, there in ((us, eu), (eu, us)):
        blob = here.encrypt(KeyId=key_id, Plaintext=b"across regions", EncryptionContext=ec)
        opened = there.decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext=ec)
        check(opened["Plaintext"] == b"across regions", "a ciphertext did not open across")
        expect_error(there, "InvalidCiphertextException", there.decrypt,
                     CiphertextBlob=blob["CiphertextBlob"], EncryptionContext={"purpose": "x"})
        dk = here.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=ec)
        back = there.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ec)
        check(back["Plaintext"] == dk["Plaintext"], "a data key did not open across")
        pair = here.generate_data_key_pair(KeyId=key_id, KeyPairSpec="ECC_NIST_P256",
                                           EncryptionContext=ec)
        private = there.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"],
                                EncryptionContext=ec)
        check(private["Plaintext"] == pair["PrivateKeyPlaintext"],
              "a data key pair's private key did not open across")
        moved = there.re_encrypt(CiphertextBlob=blob["CiphertextBlob"],
                                 SourceEncryptionContext=ec, DestinationKeyId=key_id)
        again = here.decrypt(CiphertextBlob=moved["CiphertextBlob"])
        check(again["Plaintext"] == b"across regions", "a re-encryption did not open across")

    expect_error(us, "AlreadyExistsException", us.replicate_key, KeyId=key_id, ReplicaRegion=EU)
    expect_error(eu, "UnsupportedOperationException", eu.replicate_key,
                 KeyId=key_id, ReplicaRegion=US)
    print("multi-Region checks passed:", key_id)


main()
