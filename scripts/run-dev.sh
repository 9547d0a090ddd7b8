#!/usr/bin/env bash
# Runs the p11kms daemon with the embedded defaults on a fresh Debian/Ubuntu machine:
# installs SoftHSM2 if missing, builds, and lets `p11kms dev-setup` create the dev PKI (CA,
# server and admin client certificates), the PIN files, the configs and the SoftHSM2 token under
# ./p11kms-data, builds the operator console (scripts/console.sh), then serves gRPC over mutual
# TLS on 127.0.0.1:8443, the AWS door and the console (/console/) on 127.0.0.1:4443 and
# metrics on 127.0.0.1:9464. Safe to run again: existing data is kept.
#
# Environment: P11KMS_DATA_DIR (default ./p11kms-data), P11KMS_LISTEN (gRPC, default
# 127.0.0.1:8443), P11KMS_AWS_LISTEN (default 127.0.0.1:4443), P11KMS_METRICS_LISTEN (default
# 127.0.0.1:9464). A second instance needs all four of its own; the addresses are written into
# the data directory's config the first time only.
# Options: --setup-only (create everything, then exit instead of serving), --debug (use the
# debug build; CI uses both to leave a dev setup behind cheaply before running the tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

setup_only=false
profile=release
for arg in "$@"; do
    case "$arg" in
        --setup-only) setup_only=true ;;
        --debug) profile=debug ;;
        *) echo "usage: scripts/run-dev.sh [--setup-only] [--debug]" >&2; exit 2 ;;
    esac
done

scripts/install-deps.sh
if [ "$profile" = release ]; then
    cargo build --release --locked --bin p11kms
else
    cargo build --locked --bin p11kms
fi
bin="${CARGO_TARGET_DIR:-target}/$profile/p11kms"
# The operator console (https://localhost:4443/console/), built into console/dist.
scripts/console.sh

data="${P11KMS_DATA_DIR:-$PWD/p11kms-data}"
listen="${P11KMS_LISTEN:-127.0.0.1:8443}"
aws_listen="${P11KMS_AWS_LISTEN:-127.0.0.1:4443}"
metrics_listen="${P11KMS_METRICS_LISTEN:-127.0.0.1:9464}"
"$bin" dev-setup --data-dir "$data" --listen "$listen" \
    --aws-listen "$aws_listen" --metrics-listen "$metrics_listen" \
    --console "$PWD/console/dist"
echo "p11kms: data in $data; the CLI finds p11kms-data/client.toml when run from $(pwd)" >&2
$setup_only && exit 0
# dev-setup made the token in the data directory's SoftHSM2 config; an exported
# SOFTHSM2_CONF would point serve at another one.
exec env -u SOFTHSM2_CONF "$bin" serve --config "$data/p11kms.toml"
