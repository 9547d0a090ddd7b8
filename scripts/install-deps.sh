#!/usr/bin/env bash
# Installs what p11kms needs on a Debian or Ubuntu machine, only where it is missing:
# SoftHSM2 (the dev and test HSM), OpenSC (pkcs11-tool, for operators), the openssl CLI
# (BYOK import tests), PostgreSQL (the shared store backend and its tests), and a C compiler
# (the tests build a small PKCS#11 fault-injection shim), Node.js with npm and Chromium (the
# operator console's build and its browser tests). Rust itself must already be
# installed (https://rustup.rs): this script says so and stops if it is not.
set -euo pipefail

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# openssl: the BYOK import tests wrap key material with the openssl CLI, as AWS documents it.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# python3-venv: the AWS-client tests install awscli, boto3 and aws-encryption-sdk into .venv.
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
# postgresql: the store's PostgreSQL backend; the tests start their own server from Debian's
# initdb/pg_ctl (tests/common/postgres.rs), found on PATH or under /usr/lib/postgresql/*/bin.
have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1
}
have_initdb || need+=(postgresql)
# The operator console (console/): built with Node.js and npm (scripts/console.sh), and its
# end-to-end tests drive Debian's Chromium headless through playwright-core (never a browser
# that a test tool downloads).
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
[ -x /usr/bin/chromium ] || need+=(chromium)

if [ "${#need[@]}" -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to install: ${need[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    echo "install-deps: installing ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found; install Rust first (https://rustup.rs)" >&2
    exit 1
fi
