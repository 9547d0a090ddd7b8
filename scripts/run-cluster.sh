#!/usr/bin/env bash
# Runs a two-node p11kms cluster on this machine, for trying the several-node setup
# (docs/scaling.md): a PostgreSQL from Debian's packages with its data in the cluster
# directory, and two daemons (node-a, node-b) on one SoftHSM2 dev token sharing that database.
# Installs what is missing (SoftHSM2, PostgreSQL), builds the release binary, and creates on
# first run, under ./p11kms-cluster:
#   shared/       the dev setup (`p11kms dev-setup`: token, PINs, PKI, identity, client.toml)
#   shared/node-a.toml, node-b.toml   one config per node ([node] id, [store] backend = postgres)
#   shared/node-a/, node-b/           each node's audit trail
#   postgres/     the PostgreSQL cluster (owner `postgres` when run as root), its password in
#                 shared/pg-password
# Then it serves until Ctrl-C, which stops both nodes and PostgreSQL (by their PIDs).
#
#   node-a: gRPC 127.0.0.1:8443, AWS door https://localhost:4443, metrics 127.0.0.1:9464
#   node-b: gRPC 127.0.0.1:8444, AWS door https://localhost:4444, metrics 127.0.0.1:9465
#   PostgreSQL: 127.0.0.1:5433 (P11KMS_PG_PORT), database p11kms
#
# Environment: P11KMS_CLUSTER_DIR (default ./p11kms-cluster), P11KMS_PG_PORT (default 5433).
# Options: --setup-only (create everything, start nothing), --debug (the debug build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

setup_only=false
profile=release
for arg in "$@"; do
    case "$arg" in
        --setup-only) setup_only=true ;;
        --debug) profile=debug ;;
        *) echo "usage: scripts/run-cluster.sh [--setup-only] [--debug]" >&2; exit 2 ;;
    esac
done

scripts/install-deps.sh
if [ "$profile" = release ]; then
    cargo build --release --locked --bin p11kms
else
    cargo build --locked --bin p11kms
fi
bin="$PWD/${CARGO_TARGET_DIR:-target}/$profile/p11kms"
case "${CARGO_TARGET_DIR:-}" in /*) bin="$CARGO_TARGET_DIR/$profile/p11kms" ;; esac

dir="${P11KMS_CLUSTER_DIR:-$PWD/p11kms-cluster}"
pg_port="${P11KMS_PG_PORT:-5433}"
shared="$dir/shared"
pgdata="$dir/postgres"
mkdir -p "$dir"

# The dev token, PKI and identity, shared by both nodes.
"$bin" dev-setup --data-dir "$shared" --listen 127.0.0.1:8443 \
    --aws-listen 127.0.0.1:4443 --metrics-listen 127.0.0.1:9464 >/dev/null

# PostgreSQL refuses to run as root: as root, its commands run as Debian's `postgres` user.
pg_initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
pg_bin=$(dirname "${pg_initdb:-$(command -v initdb)}")
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
if [ ! -f "$pgdata/PG_VERSION" ]; then
    mkdir -p "$pgdata"
    umask 077
    head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$shared/pg-password"
    umask 022
    pwfile=$(mktemp)
    cp "$shared/pg-password" "$pwfile"
    if [ "${#as_pg[@]}" -gt 0 ]; then chown postgres "$pgdata" "$pwfile"; fi
    "${as_pg[@]}" "$pg_bin/initdb" -D "$pgdata" -U p11kms --auth=scram-sha-256 \
        --pwfile="$pwfile" --encoding=UTF8 --locale=C >/dev/null
    rm -f "$pwfile"
fi

# One config per node: the dev config with its own listeners, node id and audit directory,
# and the shared PostgreSQL store. Written once; edit them freely afterwards.
node_config() {
    local node=$1 grpc=$2 aws=$3 metrics=$4
    local out="$shared/$node.toml"
    [ -f "$out" ] && return 0
    sed -e "s/^listen = \"127.0.0.1:8443\"/listen = \"127.0.0.1:$grpc\"/" \
        -e "s/^listen = \"127.0.0.1:4443\"/listen = \"127.0.0.1:$aws\"/" \
        -e "s/^listen = \"127.0.0.1:9464\"/listen = \"127.0.0.1:$metrics\"/" \
        -e "s|^data_dir = \"db\"|data_dir = \"$node\"\nbackend = \"postgres\"\nurl = \"postgres://p11kms@127.0.0.1:$pg_port/p11kms\"\npassword_file = \"pg-password\"|" \
        "$shared/p11kms.toml" > "$out"
    printf '\n# This node among those sharing the store (docs/scaling.md).\n[node]\nid = "%s"\n' "$node" >> "$out"
}
node_config node-a 8443 4443 9464
node_config node-b 8444 4444 9465
echo "p11kms cluster: configs in $shared/node-a.toml and node-b.toml" >&2
$setup_only && exit 0

pids=()
stop_all() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null || true
}
trap stop_all EXIT INT TERM

"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pgdata" start >/dev/null
export PGPASSWORD
PGPASSWORD=$(cat "$shared/pg-password")
if [ -z "$("$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U p11kms -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'p11kms'")" ]; then
    "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U p11kms p11kms
fi
unset PGPASSWORD

# node-a first: on a fresh token it creates the shared audit and sealing keys.
for node in node-a node-b; do
    env -u SOFTHSM2_CONF "$bin" serve --config "$shared/$node.toml" &
    pids+=($!)
    [ "$node" = node-a ] && sleep 2
done
cat >&2 <<EOF
p11kms cluster: node-a (pid ${pids[0]}) on 127.0.0.1:8443, node-b (pid ${pids[1]}) on 127.0.0.1:8444,
PostgreSQL on 127.0.0.1:$pg_port. Try, from this directory:
  $bin key create --client-config $shared/client.toml --endpoint https://127.0.0.1:8443
  $bin key list --client-config $shared/client.toml --endpoint https://127.0.0.1:8444
Ctrl-C stops both nodes and PostgreSQL.
EOF
wait -n "${pids[@]}"
