"""The AWS door against botocore's own KMS service model (issue 12, item 3).

Requests are built from the model and sent as raw JSON bodies, signed by botocore (a
`before-sign` hook replaces the serialized body), so botocore's client-side validation and
serialization never interfere: the door alone decides.

1. Members: for every operation the door serves and every member of its input (nested
   structure members as `Outer.Inner`), the door either reads it (it is in the door's list,
   P11KMS_DOOR_READS, written by the Rust test from `model::reads`) or refuses a request that
   sets it with a named error (UnsupportedOperationException). A member the door claims to read
   is never refused as unsupported.
2. Constraints: for every constraint of every member (required, min/max length or value,
   pattern, enum, list sizes, list elements, nested structure members), a request that is
   valid but for one violating value gets ValidationException naming the member.
3. The issue's examples, one by one.
"""

import base64
import json
import os
import re

from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.loaders import Loader

from common import AK_ADMIN, check, fail, session

MODEL = Loader().load_service_model("kms", "service-2", "2014-11-01")
SHAPES = MODEL["shapes"]
OMIT = object()
# Bodies over the door's 64 KiB limit are refused (413) before validation; the model's
# 131072-character policies are past it.
MAX_BODY = 60 * 1024
SAMPLES = [
    "alias/sample",
    "sample",
    "arn:aws:iam::111122223333:user/admin",
    "111122223333",
    "abcdef0123456789",
    "service.amazonaws.com",
    "cluster-abcdefghijk",
    "ABCDEFGHIJKLMNOPQRST",
    "https://xks.example.com",
    "/kms/xks/v1",
    "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
    "eu-west-1",
]
# Values that break a pattern, tried in order until one has a valid length and fails it.
OFF_PATTERN = [" ", "a b", "\u0100", "\u0001", "!", "alias/a b", "A", "a"]


def client():
    return session(AK_ADMIN).client(
        "kms", config=Config(parameter_validation=False, retries={"max_attempts": 1})
    )


KMS = client()


def call(op, body):
    """Sends `body` as the JSON input of `op`; returns (error code or None, message)."""
    data = json.dumps(body).encode()

    def swap(request, **_):
        request.data = data

    event = f"before-sign.kms.{op}"
    KMS.meta.events.register_first(event, swap, unique_id="swap-body")
    try:
        KMS._make_api_call(op, {})
        return None, ""
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"].get("Message", "")
    finally:
        KMS.meta.events.unregister(event, unique_id="swap-body")


def camel(name):
    return name[:1].lower() + name[1:]


def matches(pattern, s):
    return re.fullmatch(pattern, s) is not None


def valid(name):
    """A value of shape `name` that satisfies every constraint of the model."""
    s = SHAPES[name]
    t = s["type"]
    lo, hi = s.get("min", 0), s.get("max", 1 << 30)
    if t == "string":
        if "enum" in s:
            return s["enum"][0]
        for c in SAMPLES + ["a" * max(lo, 1)]:
            if lo <= len(c) <= hi and ("pattern" not in s or matches(s["pattern"], c)):
                return c
        fail(f"no valid sample for {name}")
    if t == "blob":
        return base64.b64encode(b"x" * max(lo, 1)).decode()
    if t == "integer":
        return max(lo, 1) if max(lo, 1) <= hi else lo
    if t == "boolean":
        return False
    if t == "timestamp":
        return 1_900_000_000
    if t == "list":
        return [valid(s["member"]["shape"])] * max(lo, 1)
    if t == "map":
        return {valid(s["key"]["shape"]): valid(s["value"]["shape"])}
    if t == "structure":
        return {m: valid(s["members"][m]["shape"]) for m in s.get("required", [])}
    fail(f"unknown type {t} of {name}")


def violations(name):
    """(what, value) pairs: values of shape `name` that break one constraint each."""
    s = SHAPES[name]
    t = s["type"]
    lo, hi = s.get("min"), s.get("max")
    out = []
    if t == "string":
        if lo:
            out.append((f"shorter than {lo}", "a" * (lo - 1)))
        if hi is not None:
            out.append((f"longer than {hi}", "a" * (hi + 1)))
        if "pattern" in s:
            bad = [c for c in OFF_PATTERN
                   if (lo or 0) <= len(c) <= (hi or 1 << 30) and not matches(s["pattern"], c)]
            if bad:
                out.append(("off pattern", bad[0]))
        if "enum" in s:
            out.append(("not in the enum", "NOT_A_VALUE_OF_THE_ENUM"))
    elif t == "blob":
        if lo:
            out.append((f"shorter than {lo} bytes", base64.b64encode(b"x" * (lo - 1)).decode()))
        if hi is not None:
            out.append((f"longer than {hi} bytes", base64.b64encode(b"x" * (hi + 1)).decode()))
    elif t == "integer":
        if lo is not None:
            out.append((f"below {lo}", lo - 1))
        if hi is not None:
            out.append((f"above {hi}", hi + 1))
    elif t == "list":
        member = s["member"]["shape"]
        if lo:
            out.append((f"fewer than {lo} elements", [valid(member)] * (lo - 1)))
        if hi is not None:
            out.append((f"more than {hi} elements", [valid(member)] * (hi + 1)))
        for what, v in violations(member):
            if v is not OMIT:
                out.append((f"an element {what}", [v]))
    elif t == "structure":
        base = valid(name)
        for m in s.get("required", []):
            body = dict(base)
            del body[m]
            out.append((f"{m} missing", body))
        for m, ref in s["members"].items():
            for what, v in violations(ref["shape"]):
                body = dict(base)
                body[m] = v
                out.append((f"{m} {what}", body))
    return out


def input_shape(op):
    return MODEL["operations"][op]["input"]["shape"]


def members(op):
    """The input's members, nested structure members as `Outer.Inner`."""
    out = []
    for m, ref in SHAPES[input_shape(op)]["members"].items():
        out.append(m)
        inner = SHAPES[ref["shape"]]
        if inner["type"] == "structure":
            out.extend(f"{m}.{n}" for n in inner["members"])
    return out


def set_member(op, body, path):
    """`body` with the member of `op`'s input at `path` set to a valid value."""
    shape = input_shape(op)
    target = body
    parts = path.split(".")
    for p in parts[:-1]:
        shape = SHAPES[shape]["members"][p]["shape"]
        target = target.setdefault(p, {})
    target[parts[-1]] = valid(SHAPES[shape]["members"][parts[-1]]["shape"])
    return body


def check_members(reads):
    refused = read = 0
    for op in sorted(reads):
        check(op in MODEL["operations"], f"the door serves {op}, which the model does not have")
        for m in members(op):
            top = m.split(".")[0]
            if m in reads[op] or (top not in reads[op] and "." in m):
                # Read; or inside a member that is itself refused (checked as a whole).
                if m in reads[op]:
                    body = set_member(op, valid(input_shape(op)), m)
                    code, msg = call(op, body)
                    check(not (code == "UnsupportedOperationException" and "member" in msg),
                          f"{op}: {m} is in the door's reads list but refused: {msg}")
                    read += 1
                continue
            body = set_member(op, valid(input_shape(op)), m)
            code, msg = call(op, body)
            expected = "UnsupportedOperationException"
            check(code == expected,
                  f"{op}: a request setting {m}, which the door does not read, got "
                  f"{code or 'success'} ({msg}), not {expected}")
            refused += 1
    print(f"members: {read} read, {refused} refused by name")


def check_constraints(reads):
    n = 0
    for op in sorted(reads):
        for what, body in violations(input_shape(op)):
            data = json.dumps(body)
            if len(data) > MAX_BODY:
                continue
            code, msg = call(op, body)
            check(code == "ValidationException",
                  f"{op} with {what}: got {code or 'success'} ({msg}), not ValidationException")
            member = camel(what.split(" ")[0])
            check(f"'{member}" in msg, f"{op} with {what}: the message does not name "
                  f"'{member}': {msg}")
            check("validation error" in msg and "detected" in msg, f"{op}: {msg}")
            n += 1
    print(f"constraints: {n} violations, each ValidationException")


def check_issue_examples():
    key = "alias/none"
    cases = [
        ("Tag without TagValue", "TagResource", {"KeyId": key, "Tags": [{"TagKey": "a"}]},
         "tags.1.member.tagValue"),
        ("empty EncryptionAlgorithm", "Encrypt",
         {"KeyId": key, "Plaintext": "eA==", "EncryptionAlgorithm": ""}, "encryptionAlgorithm"),
        ("empty PolicyName", "GetKeyPolicy", {"KeyId": key, "PolicyName": ""}, "policyName"),
        ("policy outside the pattern", "PutKeyPolicy",
         {"KeyId": key, "Policy": '{"Version": "2012-10-17", "Statement": []}\u0100'}, "policy"),
        ("alias without alias/", "CreateAlias", {"AliasName": "payments", "TargetKeyId": key},
         "aliasName"),
        ("alias with a space", "CreateAlias", {"AliasName": "alias/a b", "TargetKeyId": key},
         "aliasName"),
        ("129-character TagKey", "TagResource",
         {"KeyId": key, "Tags": [{"TagKey": "k" * 129, "TagValue": "v"}]}, "tags.1.member.tagKey"),
        ("257-character GranteePrincipal", "CreateGrant",
         {"KeyId": key, "Operations": ["Encrypt"], "GranteePrincipal": "p" * 257},
         "granteePrincipal"),
        ("8193-character grant token", "Encrypt",
         {"KeyId": key, "Plaintext": "eA==", "GrantTokens": ["g" * 8193]}, "grantTokens"),
        ("8193-character grant token to retire", "RetireGrant", {"GrantToken": "g" * 8193},
         "grantToken"),
    ]
    for what, op, body, path in cases:
        code, msg = call(op, body)
        check(code == "ValidationException", f"{what}: {code or 'success'} ({msg})")
        check(f"Value at '{path}' failed to satisfy constraint: Member must" in msg,
              f"{what}: {msg}")
    code, msg = call("CreateKey", {"CustomKeyStoreId": "cks-1234567890abcdef0"})
    check(code == "CustomKeyStoreNotFoundException", f"CreateKey in a custom key store: {code}")
    code, msg = call("GenerateRandom", {"NumberOfBytes": 8, "CustomKeyStoreId": "cks-1234567890abcdef0"})
    check(code == "CustomKeyStoreNotFoundException", f"GenerateRandom in a custom key store: {code}")
    print("the issue's examples: ValidationException with AWS's message")


def main():
    with open(os.environ["P11KMS_DOOR_READS"], encoding="utf-8") as f:
        reads = json.load(f)
    check_issue_examples()
    check_constraints(reads)
    check_members(reads)
    print("model checks passed")


if __name__ == "__main__":
    main()
