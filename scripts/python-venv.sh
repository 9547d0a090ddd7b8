#!/usr/bin/env bash
# Creates ./.venv with the real AWS clients the AWS-door tests drive: the AWS CLI (v1, from
# PyPI), boto3 and the AWS Encryption SDK for Python; and pyca/cryptography, the independent
# implementation the key-catalogue tests check signatures, public keys and PKCS#8 with. Idempotent: when the venv already has
# them, it only checks and exits (about a second).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.venv
packages=(awscli boto3 aws-encryption-sdk cryptography)

if [ -x "$venv/bin/python" ] && [ -x "$venv/bin/aws" ] \
    && "$venv/bin/python" -c 'import boto3, botocore, aws_encryption_sdk, cryptography' >/dev/null 2>&1; then
    exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "python-venv: python3 not found; run scripts/install-deps.sh" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "python-venv: creating $venv" >&2
    python3 -m venv "$venv" || {
        echo "python-venv: 'python3 -m venv' failed; install python3-venv (apt-get install python3-venv)" >&2
        exit 1
    }
fi
echo "python-venv: installing ${packages[*]} into $venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "${packages[@]}"
"$venv/bin/python" -c 'import boto3, botocore, aws_encryption_sdk, cryptography' >/dev/null
"$venv/bin/aws" --version >&2
