#!/usr/bin/env bash
# Runs the p11kms daemon with the embedded defaults on a fresh Debian/Ubuntu machine:
# installs SoftHSM2 if missing, builds, creates the dev token, the dev PKI (CA, server and
# admin client certificates) and the SQLite store under ./p11kms-data, then serves gRPC over
# mutual TLS on 127.0.0.1:8443. Safe to run again: existing data is kept.
#
# Environment: P11KMS_DATA_DIR (default ./p11kms-data), P11KMS_LISTEN (default 127.0.0.1:8443).
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

data="${P11KMS_DATA_DIR:-$PWD/p11kms-data}"
listen="${P11KMS_LISTEN:-127.0.0.1:8443}"
"$bin" dev-setup --data-dir "$data" --listen "$listen"
P11KMS_SO_PIN="$(cat "$data/so-pin")" P11KMS_USER_PIN="$(cat "$data/user-pin")" \
    softhsm-config/init-token.sh "$data/softhsm" p11kms-dev >/dev/null
echo "p11kms: data in $data; the CLI finds p11kms-data/client.toml when run from $(pwd)" >&2
$setup_only && exit 0
exec "$bin" serve --config "$data/p11kms.toml"
