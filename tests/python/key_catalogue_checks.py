"""Independent checks of p11kms's key catalogue with pyca/cryptography (OpenSSL underneath),
driven by tests/key_catalogue.rs.

  key_catalogue_checks.py local IN.json OUT.json
      IN lists what p11kms produced: public keys (GetPublicKey SPKI), signatures (with message,
      message type and algorithm), RSA encryption keys with plaintexts, and data key pairs. Each
      SPKI must parse with the expected key type and size; each signature must verify with the
      SPKI (and fail for a modified message); each RSA key gets OAEP ciphertexts made here
      (written to OUT for p11kms to decrypt); each data key pair's PKCS#8 must parse and match its
      SPKI.

  key_catalogue_checks.py boto3 ECC_KEY_ID RSA_KEY_ID
      Signs and verifies through the AWS JSON door with boto3, checks the signature locally
      with the public key from GetPublicKey, and expects KMSInvalidSignatureException for a
      modified message.

  key_catalogue_checks.py boto3-ecdh KEY_AGREEMENT_KEY_ID RSA_ENCRYPTION_KEY_ID SYMMETRIC_KEY_ID
      Through the AWS JSON door with boto3: DescribeKey lists KeyAgreementAlgorithms [ECDH];
      DeriveSharedSecret with a peer key made here equals the ECDH secret computed here with
      the public key from GetPublicKey; a peer key on another curve is ValidationException.
      Then ReEncrypt from a ciphertext made here with RSA-OAEP (SHA-256) under the RSA key's
      public key to the symmetric key, and back to the RSA key.

  key_catalogue_checks.py boto3-ed25519 ED25519_KEY_ID
      Signs through the AWS JSON door with boto3 (ED25519_SHA_512, RAW) and verifies the raw
      signature locally with pyca/cryptography and the key from GetPublicKey.
"""

import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from common import check, fail

HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
CURVES = {
    "ECC_NIST_P256": ec.SECP256R1,
    "ECC_NIST_P384": ec.SECP384R1,
    "ECC_NIST_P521": ec.SECP521R1,
    "ECC_SECG_P256K1": ec.SECP256K1,
}


def b64d(s):
    return base64.b64decode(s)


def load_spki(spec, der):
    key = serialization.load_der_public_key(der)
    if spec.startswith("RSA_"):
        check(isinstance(key, rsa.RSAPublicKey), f"{spec}: SPKI is not an RSA key")
        check(key.key_size == int(spec[4:]), f"{spec}: modulus is {key.key_size} bits")
        check(key.public_numbers().e == 65537, f"{spec}: public exponent is not 65537")
    elif spec == "ECC_NIST_EDWARDS25519":
        check(isinstance(key, ed25519.Ed25519PublicKey), f"{spec}: SPKI is not an Ed25519 key")
    else:
        check(isinstance(key, ec.EllipticCurvePublicKey), f"{spec}: SPKI is not an EC key")
        check(
            isinstance(key.curve, CURVES[spec]),
            f"{spec}: SPKI curve is {key.curve.name}",
        )
    # Re-encoding gives the same DER: p11kms's SPKI is canonical.
    again = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    check(again == der, f"{spec}: SPKI is not canonical DER")
    return key


def verify(key, algorithm, message, message_type, signature):
    h = HASHES[algorithm[-3:]]()
    if message_type == "DIGEST":
        data, alg = message, Prehashed(h)
    else:
        data, alg = message, h
    if algorithm.startswith("RSASSA_PSS"):
        key.verify(
            signature,
            data,
            padding.PSS(mgf=padding.MGF1(HASHES[algorithm[-3:]]()), salt_length=h.digest_size),
            alg,
        )
    elif algorithm.startswith("RSASSA_PKCS1"):
        key.verify(signature, data, padding.PKCS1v15(), alg)
    else:
        key.verify(signature, data, ec.ECDSA(alg))


def local(path_in, path_out):
    spec_in = json.load(open(path_in, encoding="utf-8"))
    keys = {}
    for k in spec_in["public_keys"]:
        keys[k["key_id"]] = load_spki(k["spec"], b64d(k["spki"]))
    print(f"parsed {len(keys)} public keys")

    n = 0
    for s in spec_in["signatures"]:
        key = keys[s["key_id"]]
        msg = b64d(s["message"])
        sig = b64d(s["signature"])
        label = f"{s['spec']} {s['algorithm']} {s['message_type']}"
        if s["algorithm"].startswith("ECDSA"):
            # DER-encoded X9.62 signature: cryptography parses it strictly.
            from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

            r, ss = decode_dss_signature(sig)
            check(r > 0 and ss > 0, f"{label}: bad DER signature")
        try:
            verify(key, s["algorithm"], msg, s["message_type"], sig)
        except InvalidSignature:
            fail(f"{label}: the signature made by p11kms does not verify")
        tampered = bytearray(msg)
        tampered[0] ^= 1
        try:
            verify(key, s["algorithm"], bytes(tampered), s["message_type"], sig)
            fail(f"{label}: the signature verifies over a modified message")
        except InvalidSignature:
            pass
        n += 1
    print(f"verified {n} signatures")

    out = {"ciphertexts": []}
    for e in spec_in["rsa_encryption"]:
        key = keys[e["key_id"]]
        pt = b64d(e["plaintext"])
        for alg, h in (("RSAES_OAEP_SHA_1", hashes.SHA1), ("RSAES_OAEP_SHA_256", hashes.SHA256)):
            ct = key.encrypt(pt, padding.OAEP(mgf=padding.MGF1(h()), algorithm=h(), label=None))
            out["ciphertexts"].append(
                {"key_id": e["key_id"], "algorithm": alg, "ciphertext": base64.b64encode(ct).decode()}
            )
        # p11kms's own ciphertexts decrypt nowhere but in the HSM; here we only check sizes.
        for c in e.get("p11kms_ciphertexts", []):
            check(len(b64d(c)) == key.key_size // 8, "p11kms ciphertext has the wrong size")
    print(f"made {len(out['ciphertexts'])} OAEP ciphertexts")

    for d in spec_in["data_key_pairs"]:
        spec = d["spec"]
        private = serialization.load_der_private_key(b64d(d["pkcs8"]), password=None)
        public = load_spki(spec, b64d(d["spki"]))
        derived = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        check(derived == b64d(d["spki"]), f"{spec}: PKCS#8 does not match the public key")
        # The private key works: sign here, verify with the SPKI.
        if spec.startswith("RSA_"):
            sig = private.sign(b"data key pair", padding.PKCS1v15(), hashes.SHA256())
            public.verify(sig, b"data key pair", padding.PKCS1v15(), hashes.SHA256())
        elif spec == "ECC_NIST_EDWARDS25519":
            public.verify(private.sign(b"data key pair"), b"data key pair")
        else:
            sig = private.sign(b"data key pair", ec.ECDSA(hashes.SHA256()))
            public.verify(sig, b"data key pair", ec.ECDSA(hashes.SHA256()))
        reencoded = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if spec == "ECC_NIST_EDWARDS25519":
            # RFC 8410 has one encoding: p11kms's must be it.
            check(reencoded == b64d(d["pkcs8"]), f"{spec}: PKCS#8 is not canonical DER")
        else:
            check(
                serialization.load_der_private_key(reencoded, None).private_numbers()
                == private.private_numbers(),
                f"{spec}: PKCS#8 round trip",
            )
    print(f"checked {len(spec_in['data_key_pairs'])} data key pairs")

    with open(path_out, "w", encoding="utf-8") as f:
        json.dump(out, f)


def boto3_checks(ecc_key, rsa_key):
    import botocore.exceptions

    from common import AK_ADMIN, session

    kms = session(AK_ADMIN).client("kms")
    for key_id, alg in ((ecc_key, "ECDSA_SHA_256"), (rsa_key, "RSASSA_PSS_SHA_256")):
        msg = b"signed through the AWS JSON door"
        out = kms.sign(KeyId=key_id, Message=msg, MessageType="RAW", SigningAlgorithm=alg)
        check(out["SigningAlgorithm"] == alg, f"boto3 sign: {out}")
        pub = kms.get_public_key(KeyId=key_id)
        check(alg in pub["SigningAlgorithms"], f"GetPublicKey lists {pub['SigningAlgorithms']}")
        key = serialization.load_der_public_key(pub["PublicKey"])
        try:
            verify(key, alg, msg, "RAW", out["Signature"])
        except InvalidSignature:
            fail(f"{alg}: boto3-obtained signature does not verify locally")
        v = kms.verify(
            KeyId=key_id, Message=msg, MessageType="RAW", Signature=out["Signature"], SigningAlgorithm=alg
        )
        check(v["SignatureValid"] is True, f"boto3 verify: {v}")
        digest = hashlib.sha256(msg).digest()
        v = kms.verify(
            KeyId=key_id,
            Message=digest,
            MessageType="DIGEST",
            Signature=out["Signature"],
            SigningAlgorithm=alg,
        )
        check(v["SignatureValid"] is True, "DIGEST verify of a RAW signature")
        try:
            kms.verify(
                KeyId=key_id,
                Message=msg + b"!",
                MessageType="RAW",
                Signature=out["Signature"],
                SigningAlgorithm=alg,
            )
            fail("a signature over another message verified")
        except botocore.exceptions.ClientError as e:
            code = e.response["Error"]["Code"]
            check(code == "KMSInvalidSignatureException", f"bad signature gave {code}")
        print(f"boto3 {alg}: sign, GetPublicKey, verify, bad signature OK")


def boto3_ecdh(agreement_key, rsa_key, sym_key):
    import botocore.exceptions

    from common import AK_ADMIN, session

    kms = session(AK_ADMIN).client("kms")
    meta = kms.describe_key(KeyId=agreement_key)["KeyMetadata"]
    check(meta["KeyUsage"] == "KEY_AGREEMENT", f"DescribeKey: {meta}")
    check(meta.get("KeyAgreementAlgorithms") == ["ECDH"], f"DescribeKey: {meta}")
    pub = kms.get_public_key(KeyId=agreement_key)
    check(pub.get("KeyAgreementAlgorithms") == ["ECDH"], f"GetPublicKey: {pub}")
    ours = serialization.load_der_public_key(pub["PublicKey"])
    for _ in range(2):
        peer = ec.generate_private_key(CURVES[pub["KeySpec"]]())
        peer_spki = peer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out = kms.derive_shared_secret(
            KeyId=agreement_key, KeyAgreementAlgorithm="ECDH", PublicKey=peer_spki
        )
        expected = peer.exchange(ec.ECDH(), ours)
        check(out["SharedSecret"] == expected, "DeriveSharedSecret differs from local ECDH")
        check(out["KeyAgreementAlgorithm"] == "ECDH", f"DeriveSharedSecret: {out}")
    other = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        kms.derive_shared_secret(KeyId=agreement_key, KeyAgreementAlgorithm="ECDH", PublicKey=other)
        fail("a P-384 peer key was accepted for a P-256 key")
    except botocore.exceptions.ClientError as e:
        code = e.response["Error"]["Code"]
        check(code == "ValidationException", f"other curve gave {code}")
    print("boto3 DeriveSharedSecret: agrees with local ECDH; other curve refused")

    # ReEncrypt between an RSA key and a symmetric key.
    rsa_pub = serialization.load_der_public_key(kms.get_public_key(KeyId=rsa_key)["PublicKey"])
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    blob = rsa_pub.encrypt(b"re-encrypted by boto3", oaep)
    to_sym = kms.re_encrypt(
        CiphertextBlob=blob,
        SourceKeyId=rsa_key,
        SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
        DestinationKeyId=sym_key,
        DestinationEncryptionContext={"via": "boto3"},
    )
    check(to_sym["SourceEncryptionAlgorithm"] == "RSAES_OAEP_SHA_256", f"ReEncrypt: {to_sym}")
    back = kms.re_encrypt(
        CiphertextBlob=to_sym["CiphertextBlob"],
        SourceEncryptionContext={"via": "boto3"},
        DestinationKeyId=rsa_key,
        DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1",
    )
    check(back["DestinationEncryptionAlgorithm"] == "RSAES_OAEP_SHA_1", f"ReEncrypt: {back}")
    pt = kms.decrypt(
        CiphertextBlob=back["CiphertextBlob"], KeyId=rsa_key, EncryptionAlgorithm="RSAES_OAEP_SHA_1"
    )["Plaintext"]
    check(pt == b"re-encrypted by boto3", "RSA -> symmetric -> RSA lost the plaintext")
    print("boto3 ReEncrypt: RSA (local OAEP) -> symmetric -> RSA OK")


def boto3_ed25519(key_id):
    from common import AK_ADMIN, session

    kms = session(AK_ADMIN).client("kms")
    pub = kms.get_public_key(KeyId=key_id)
    check(pub["KeySpec"] == "ECC_NIST_EDWARDS25519", f"GetPublicKey: {pub}")
    check(pub["SigningAlgorithms"] == ["ED25519_SHA_512"], f"GetPublicKey: {pub}")
    key = serialization.load_der_public_key(pub["PublicKey"])
    msg = b"signed with Ed25519 through the AWS JSON door"
    sig = kms.sign(KeyId=key_id, Message=msg, MessageType="RAW", SigningAlgorithm="ED25519_SHA_512")[
        "Signature"
    ]
    check(len(sig) == 64, f"Ed25519 signature of {len(sig)} bytes")
    try:
        key.verify(sig, msg)
    except InvalidSignature:
        fail("the Ed25519 signature does not verify locally")
    try:
        key.verify(sig, msg + b"!")
        fail("the Ed25519 signature verified another message")
    except InvalidSignature:
        pass
    print("boto3 Ed25519: sign, local verify, other message refused OK")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "local":
        local(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "boto3":
        boto3_checks(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "boto3-ed25519":
        boto3_ed25519(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "boto3-ecdh":
        boto3_ecdh(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        fail("usage: key_catalogue_checks.py local IN OUT | boto3 ECC_KEY RSA_KEY")
