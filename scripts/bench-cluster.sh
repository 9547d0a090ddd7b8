#!/usr/bin/env bash
# Issue 17's figures (docs/benchmarks.md, "Several nodes"), on one machine, in one run:
#   1. Encrypt, TagResource and CreateKey on the bench's own daemon with the SQLite store and
#      with the PostgreSQL store, alternately (--rounds times each);
#   2. how long a DisableKey / EnableKey on node-a takes to reach node-b (two nodes of
#      scripts/run-cluster.sh);
#   3. start-up time and resident memory of a node with --keys keys in PostgreSQL (seeded
#      with SQL: metadata rows only, no token objects, which start-up does not touch).
# Starts scripts/run-cluster.sh (PostgreSQL and two nodes) in a scratch directory and stops it
# (by its PID) at the end. JSON lines on standard output, progress on standard error.
#
# Usage: scripts/bench-cluster.sh [--rounds N] [--keys N] [--duration SECS]
#                                 [--only crypto|propagation|startup]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=2
keys=100000
duration=5
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --keys) keys=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        *) echo "usage: scripts/bench-cluster.sh [--rounds N] [--keys N] [--duration SECS] [--only crypto|propagation|startup]" >&2; exit 2 ;;
    esac
done

want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

# run-cluster.sh builds the daemon without the bench feature: build that too, first.
cargo build --release --locked --bin p11kms >&2
cargo build --release --locked --features bench --bin p11kms-bench >&2
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target/release/p11kms"
bench="$target/release/p11kms-bench"
work=$(mktemp -d /tmp/p11kms-bench-cluster.XXXXXX)
chmod 755 "$work"
export P11KMS_CLUSTER_DIR="$work/cluster" P11KMS_PG_PORT=${P11KMS_PG_PORT:-5439}
shared="$work/cluster/shared"

scripts/run-cluster.sh > "$work/cluster.log" 2>&1 &
cluster_pid=$!
startup_pid=""
cleanup() {
    [ -n "$startup_pid" ] && kill -TERM "$startup_pid" 2>/dev/null && wait "$startup_pid" 2>/dev/null
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 300); do
    grep -q "Ctrl-C stops both" "$work/cluster.log" 2>/dev/null && break
    sleep 1
done
grep -q "Ctrl-C stops both" "$work/cluster.log" || { cat "$work/cluster.log" >&2; exit 1; }
sleep 2

pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -1)")
psql_() { PGPASSWORD=$(cat "$shared/pg-password") "$pg_bin/psql" -h 127.0.0.1 -p "$P11KMS_PG_PORT" -U p11kms -v ON_ERROR_STOP=1 -qtA "$@"; }
psql_ -d postgres -c "CREATE DATABASE bench"
psql_ -d postgres -c "CREATE DATABASE startup"
pg_url="postgres://p11kms@127.0.0.1:$P11KMS_PG_PORT"

# 1. The request path and the control plane on each backend, alternately.
for r in $(seq 1 "$rounds"); do
    want crypto || break
    for backend in sqlite postgres; do
        echo "bench-cluster: round $r, $backend" >&2
        extra=()
        if [ "$backend" = postgres ]; then
            psql_ -d bench -c "DROP SCHEMA public CASCADE; CREATE SCHEMA public"
            extra=(--store-postgres "$pg_url/bench" --store-password-file "$shared/pg-password")
        fi
        "$bench" --suite crypto --ops encrypt,tag-resource,create-key --concurrency 1,8 \
            --duration "$duration" "${extra[@]}" \
            | sed "s/^{/{\"backend\":\"$backend\",\"round\":$r,/"
    done
done

# 2. Propagation between the two nodes.
want propagation && echo "bench-cluster: propagation" >&2 && "$bench" --suite propagation --endpoint https://127.0.0.1:8443,https://127.0.0.1:8444 \
    --ca-cert "$shared/pki/ca.pem" --client-cert "$shared/pki/admin.pem" \
    --client-key "$shared/pki/admin-key.pem" --tls-domain localhost --propagation-rounds 50

# 3. Start-up with $keys keys in PostgreSQL.
want startup || exit 0
echo "bench-cluster: start-up with $keys keys" >&2
sed -e "s|/p11kms\"|/startup\"|" -e 's/127.0.0.1:8443/127.0.0.1:8446/' \
    -e 's/127.0.0.1:4443/127.0.0.1:4446/' -e 's/127.0.0.1:9464/127.0.0.1:9467/' \
    -e 's/^data_dir = "node-a"/data_dir = "node-s"/' -e 's/^id = "node-a"/id = "node-s"/' \
    "$shared/node-a.toml" > "$shared/node-s.toml"
start_node() {
    local t0 pid
    t0=$(date +%s%N)
    ready_ms=
    env -u SOFTHSM2_CONF "$bin" serve --config "$shared/node-s.toml" > "$work/node-s.log" 2>&1 &
    pid=$!
    # Ready: the daemon logs this line once the cache is loaded and every listener is up.
    until grep -q "p11kms serving gRPC" "$work/node-s.log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { cat "$work/node-s.log" >&2; exit 1; }
        sleep 0.02
    done
    startup_pid=$pid
    ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
}
start_node      # migrates the empty database
kill -TERM "$startup_pid"; wait "$startup_pid" 2>/dev/null || true; startup_pid=""
# The default key policy CreateKey writes for the dev account.
policy='{"Version":"2012-10-17","Id":"key-default-1","Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}'
psql_ -d startup <<EOF
INSERT INTO keys (key_id, account, description, key_spec, key_usage, origin, state,
                  created_at_ms, current_version, policy, row_version)
SELECT gen_random_uuid()::text, '111122223333', 'seeded ' || g, 'SYMMETRIC_DEFAULT',
       'ENCRYPT_DECRYPT', 'AWS_KMS', 'Enabled', 1796500000000 + g, 1, '$policy', 1
FROM generate_series(1, $keys) AS g;
INSERT INTO key_versions (key_id, version, created_at_ms) SELECT key_id, 1, created_at_ms FROM keys;
INSERT INTO tags (key_id, tag_key, tag_value) SELECT key_id, 'team', 'bench' FROM keys;
EOF
for r in $(seq 1 "$rounds"); do
    start_node
    ms=$ready_ms
    sleep 1
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$startup_pid/status")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$startup_pid/status")
    loaded=$(grep -o 'keys=[0-9]*' "$work/node-s.log" | tail -1)
    echo "{\"case\":\"startup-postgres\",\"round\":$r,\"keys_in_store\":$keys,\"ready_ms\":$ms,\"rss_kb\":$rss,\"vmhwm_kb\":$hwm,\"log\":\"$loaded\"}"
    kill -TERM "$startup_pid"; wait "$startup_pid" 2>/dev/null || true; startup_pid=""
done
