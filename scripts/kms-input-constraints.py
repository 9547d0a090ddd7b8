#!/usr/bin/env python3
"""Extracts the input constraints of every KMS operation from botocore's service model
(`botocore/data/kms/2014-11-01/service-2.json.gz`, read with botocore's own loader) into the
compact JSON the AWS and gRPC doors validate requests against:
`src/api/aws_json/model/kms-input-constraints.json`.

For every operation: its input shape. For every shape reachable from an input: its type,
required members, members (in model order), min/max (length, or value for integers), pattern,
enum, list member, map key/value, and whether it is sensitive. No documentation strings.

Run it with the project venv's Python (scripts/python-venv.sh creates it):

    .venv/bin/python scripts/kms-input-constraints.py           # print the JSON
    .venv/bin/python scripts/kms-input-constraints.py --write   # update the checked-in file

A test (tests/aws_clients.rs, `input_constraints_are_botocores_model`) checks that the
checked-in file is exactly what this prints, so it cannot drift from the model.
"""

import json
import os
import sys

from botocore.loaders import Loader

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "src", "api", "aws_json", "model", "kms-input-constraints.json",
)

KEPT = ("type", "min", "max", "pattern", "enum", "sensitive")

# Constraints the KMS API Reference documents that botocore's model does not carry. Each is
# applied on top of the model and listed in the output under "overrides", so it is visible.
OVERRIDES = {
    # The API Reference of CreateAlias/UpdateAlias/DeleteAlias: AliasName starts with
    # "alias/" (pattern ^alias/[a-zA-Z0-9/_-]+$); botocore's AliasNameType omits the prefix.
    # The ':' of botocore's character set is kept so existing aliases stay addressable.
    "AliasNameType": {"pattern": "^alias/[a-zA-Z0-9:/_-]+$"},
}


def shape_entry(shape):
    out = {k: shape[k] for k in KEPT if k in shape}
    t = shape["type"]
    if t == "structure":
        out["members"] = [[name, m["shape"]] for name, m in shape["members"].items()]
        if shape.get("required"):
            out["required"] = list(shape["required"])
    elif t == "list":
        out["member"] = shape["member"]["shape"]
    elif t == "map":
        out["key"] = shape["key"]["shape"]
        out["value"] = shape["value"]["shape"]
    return out


def extract(model):
    shapes = model["shapes"]
    ops = {}
    wanted = []
    for name, op in sorted(model["operations"].items()):
        if "input" in op:
            ops[name] = op["input"]["shape"]
            wanted.append(op["input"]["shape"])
    out_shapes = {}
    while wanted:
        name = wanted.pop()
        if name in out_shapes:
            continue
        entry = shape_entry(shapes[name])
        entry.update(OVERRIDES.get(name, {}))
        out_shapes[name] = entry
        wanted.extend(s for _, s in entry.get("members", []))
        wanted.extend(entry[k] for k in ("member", "key", "value") if k in entry)
    return {
        "service": model["metadata"]["serviceId"],
        "apiVersion": model["metadata"]["apiVersion"],
        "overrides": OVERRIDES,
        "operations": ops,
        "shapes": dict(sorted(out_shapes.items())),
    }


def render():
    model = Loader().load_service_model("kms", "service-2", "2014-11-01")
    return json.dumps(extract(model), indent=1, sort_keys=True, ensure_ascii=True) + "\n"


def main():
    text = render()
    if sys.argv[1:] == ["--write"]:
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        with open(OUT, "w", encoding="utf-8") as f:
            f.write(text)
    elif sys.argv[1:]:
        sys.exit("usage: kms-input-constraints.py [--write]")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
