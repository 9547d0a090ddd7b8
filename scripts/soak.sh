#!/usr/bin/env bash
# Soak: runs the real daemon under a mixed load for a given time and fails if any request
# fails or if its memory or file descriptors grow without bound. Not part of CI (it runs for
# minutes); see docs/security.md "Soak" for the last recorded run.
#
# What it does:
#   1. builds p11kms and p11kms-bench (debug, or --release), unless --no-build;
#   2. `p11kms dev-setup` in a fresh temporary directory (own SoftHSM2 token, dev PKI, config)
#      on free loopback ports, then `p11kms serve` in the background (its PID is the only
#      process this script signals);
#   3. four `p11kms-bench --endpoint` clients, each --concurrency C/4 (C = 64 by default),
#      looping over different operation pairs (encrypt+decrypt, generate-data-key+re-encrypt,
#      sign+verify, generate-data-key-without-plaintext+decrypt) until the time is up, so
#      that four kinds of operation run at once at all times;
#   4. every --interval seconds, samples the daemon's RSS (VmRSS) and open file descriptors
#      (/proc/PID/fd) into samples.tsv;
#   5. fails (exit 1) if any bench case reported errors, if the daemon died, or if the mean
#      RSS (or fd count) of the last third of the samples exceeds the first third's by more
#      than --max-growth percent (fds: and by more than 16). Samples of the first --warmup
#      seconds are not counted (pools and caches fill then).
#
# Usage: scripts/soak.sh [--duration SECONDS] [--concurrency N] [--interval SECONDS]
#                        [--warmup SECONDS] [--max-growth PERCENT] [--release] [--no-build]
#                        [--keep]
# Defaults: 600 s, 64, 5 s, 15 s, 20 %, debug build. --keep leaves the work directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=600
concurrency=64
interval=5
warmup=15
max_growth=20
profile=debug
build=true
keep=false
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift ;;
        --concurrency) concurrency="$2"; shift ;;
        --interval) interval="$2"; shift ;;
        --warmup) warmup="$2"; shift ;;
        --max-growth) max_growth="$2"; shift ;;
        --release) profile=release ;;
        --no-build) build=false ;;
        --keep) keep=true ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
    esac
    shift
done
clients=4
per_client=$(( (concurrency + clients - 1) / clients ))

if $build; then
    if [ "$profile" = release ]; then
        cargo build --release --locked --features bench --bin p11kms --bin p11kms-bench
    else
        cargo build --locked --features bench --bin p11kms --bin p11kms-bench
    fi
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"
bin="$(cd "$bin" && pwd)"

work="$(mktemp -d "${TMPDIR:-/tmp}/p11kms-soak.XXXXXX")"
daemon_pid=""
sampler_pid=""
client_pids=()
cleanup() {
    for p in "${client_pids[@]}" $sampler_pid; do kill "$p" 2>/dev/null || true; done
    if [ -n "$daemon_pid" ]; then kill -TERM "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; fi
    if $keep; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc="127.0.0.1:$(free_port)"
# A clean environment: no ambient P11KMS_*, AWS_* or SOFTHSM2_CONF.
hermetic=(env -i "PATH=$PATH" "HOME=$work" "LANG=C.UTF-8")
"${hermetic[@]}" "$bin/p11kms" dev-setup --data-dir "$work/data" --listen "$grpc" \
    --aws-listen "127.0.0.1:$(free_port)" --metrics-listen "127.0.0.1:$(free_port)" >"$work/dev-setup.log"
(cd "$work" && exec "${hermetic[@]}" "$bin/p11kms" serve --config data/p11kms.toml >"$work/serve.log" 2>&1) &
daemon_pid=$!
for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/${grpc%:*}/${grpc#*:}") 2>/dev/null; then break; fi
    kill -0 "$daemon_pid" 2>/dev/null || { echo "FAIL: daemon exited at start:"; cat "$work/serve.log"; exit 1; }
    sleep 0.1
done
echo "daemon PID $daemon_pid on $grpc; soak ${duration}s at c=$((per_client * clients)), work $work"

end=$(( $(date +%s) + duration ))
pki="$work/data/pki"
client() { # client <name> <ops>
    local n=0
    while [ "$(date +%s)" -lt $(( end - 12 )) ]; do
        n=$((n + 1))
        "${hermetic[@]}" "$bin/p11kms-bench" --suite crypto --no-raw --ops "$2" \
            --endpoint "https://$grpc" --ca-cert "$pki/ca.pem" --client-cert "$pki/admin.pem" \
            --client-key "$pki/admin-key.pem" --tls-domain localhost --server-pid "$daemon_pid" \
            --concurrency "$per_client" --channels 2 --duration 10 --daemon-phase 10 --warmup 0.5 \
            >>"$work/bench-$1.jsonl" 2>>"$work/bench-$1.log" || echo "bench run $n exited non-zero" >>"$work/bench-$1.fail"
    done
}
client a encrypt,decrypt & client_pids+=($!)
client b generate-data-key,re-encrypt & client_pids+=($!)
client c sign,verify & client_pids+=($!)
client d generate-data-key-without-plaintext,decrypt & client_pids+=($!)

start=$(date +%s)
(
    while kill -0 "$daemon_pid" 2>/dev/null; do
        t=$(( $(date +%s) - start ))
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status" 2>/dev/null || echo 0)
        fds=$(ls "/proc/$daemon_pid/fd" 2>/dev/null | wc -l)
        printf '%s\t%s\t%s\n' "$t" "$rss" "$fds"
        sleep "$interval"
    done
) >"$work/samples.tsv" &
sampler_pid=$!

for p in "${client_pids[@]}"; do wait "$p"; done
client_pids=()
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""

status=0
if ! kill -0 "$daemon_pid" 2>/dev/null; then
    echo "FAIL: the daemon died"; tail -20 "$work/serve.log"; status=1
fi
cases=$(cat "$work"/bench-*.jsonl | jq -s 'length')
ops=$(cat "$work"/bench-*.jsonl | jq -s 'map(.ops) | add // 0')
errors=$(cat "$work"/bench-*.jsonl | jq -s 'map(.error_count // 0) | add // 0')
echo "bench: $cases cases, $ops requests, $errors errors"
if [ "$errors" != 0 ]; then
    echo "FAIL: requests failed:"
    cat "$work"/bench-*.jsonl | jq -c 'select(.error_count > 0) | {op, errors}'
    status=1
fi
if [ "$cases" = 0 ] || ls "$work"/bench-*.fail >/dev/null 2>&1; then
    echo "FAIL: a bench run failed:"; cat "$work"/bench-*.fail "$work"/bench-*.log 2>/dev/null | tail -20; status=1
fi
# Growth: mean of the last third against the first third, after the warm-up.
growth=$(awk -v w="$warmup" -v g="$max_growth" -F'\t' '
    BEGIN { n = 0 }
    $1 >= w { t[n] = $1; r[n] = $2; f[n] = $3; n++ }
    END {
        if (n < 3) { print "FAIL too few samples (" n ")"; exit }
        k = int(n / 3)
        for (i = 0; i < k; i++) { r1 += r[i]; f1 += f[i]; r3 += r[n-1-i]; f3 += f[n-1-i] }
        r1 /= k; r3 /= k; f1 /= k; f3 /= k
        verdict = "ok"
        if (r3 > r1 * (1 + g / 100)) verdict = "FAIL RSS grows"
        if (f3 > f1 * (1 + g / 100) && f3 > f1 + 16) verdict = "FAIL fds grow"
        printf "%s: %d samples; RSS first third %.0f KiB, last third %.0f KiB (%+.1f %%); fds %.1f -> %.1f\n",
            verdict, n, r1, r3, (r3 / r1 - 1) * 100, f1, f3
    }' "$work/samples.tsv")
echo "memory: $growth"
case "$growth" in FAIL*) status=1 ;; esac
peak=$(awk -F'\t' 'BEGIN{m=0} $2>m{m=$2} END{print m}' "$work/samples.tsv")
echo "peak RSS ${peak} KiB; samples (seconds, RSS KiB, fds):"
tr '\n' ' ' <"$work/samples.tsv"; echo
if [ "$status" = 0 ]; then echo "SOAK PASSED"; else echo "SOAK FAILED"; fi
exit "$status"
