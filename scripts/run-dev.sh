#!/usr/bin/env bash
# Runs the p11kms daemon with the embedded defaults on a fresh Debian/Ubuntu machine:
# installs SoftHSM2 if missing, builds, creates the dev token, the dev PKI (CA, server and
# admin client certificates) and the SQLite store under ./p11kms-data, then serves gRPC over
# mutual TLS on 127.0.0.1:8443. Safe to run again: existing data is kept.
#
# Environment: P11KMS_DATA_DIR (default ./p11kms-data), P11KMS_LISTEN (default 127.0.0.1:8443).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
cargo build --release --locked --bin p11kms
bin="${CARGO_TARGET_DIR:-target}/release/p11kms"

data="${P11KMS_DATA_DIR:-$PWD/p11kms-data}"
listen="${P11KMS_LISTEN:-127.0.0.1:8443}"
"$bin" dev-setup --data-dir "$data" --listen "$listen"
P11KMS_SO_PIN="$(cat "$data/so-pin")" P11KMS_USER_PIN="$(cat "$data/user-pin")" \
    softhsm-config/init-token.sh "$data/softhsm" p11kms-dev >/dev/null
echo "p11kms: data in $data; the CLI finds p11kms-data/client.toml when run from $(pwd)" >&2
exec "$bin" serve --config "$data/p11kms.toml"
