#!/usr/bin/env bash
# Runs the whole p11kms test suite: installs what is missing (SoftHSM2, OpenSC, a C
# compiler), checks formatting and lints, then runs every unit and integration test against
# real SoftHSM2 tokens, real SQLite and real gRPC clients over mutual TLS, and the AWS door
# against the real AWS CLI, boto3 and AWS Encryption SDK (installed into ./.venv from PyPI),
# and the operator console in headless Chromium.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/python-venv.sh
# The operator console: npm packages from the registry, built into console/dist (the
# browser tests serve it from there).
scripts/console.sh
cargo fmt --all -- --check
# `--features bench`: the benchmark's code (p11kms-bench, hsm::raw, the policy scenario) is
# linted and tested too, though the shipped library leaves it out.
cargo clippy --locked --all-targets --features bench -- -D warnings
cargo test --locked --features bench
