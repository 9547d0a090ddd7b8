#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/*.rs, see docs/security.md "Fuzzing"), one
# after the other, each for a bounded time or number of runs, and fails on the first crash,
# hang (an input over 10 s) or oversized allocation (over 2 GB). Installs what it needs when
# missing: the nightly Rust toolchain (rustup) and cargo-fuzz (crates.io).
#
#   scripts/fuzz.sh                      every target for 30 s (what CI runs)
#   scripts/fuzz.sh --time 600 policy    one target for 10 minutes
#   scripts/fuzz.sh --runs 10000000      every target for 10 million executions
#   scripts/fuzz.sh --runs 10000000 --time 900   ... or 15 minutes each, whichever is first
#   scripts/fuzz.sh --install-only       install and fetch, run nothing
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/, read-only) and its local
# corpus (fuzz/corpus/<target>/, git-ignored, where new inputs go). A crash input is left in
# fuzz/artifacts/<target>/: fix the bug, then copy the input to
# tests/fixtures/fuzz-regressions/<target>/ and list it with its expected outcome in that
# directory's expected.txt (tests/fuzz_regressions.rs runs it in the normal suite).
# Builds go to $CARGO_TARGET_DIR (default fuzz/target, git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
targets=(ciphertext policy aws_json sigv4 sts_query identity_directory audit_verify xks)
time_per_target=""
runs=""
install_only=0
chosen=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) time_per_target="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --install-only) install_only=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
        *) chosen+=("$1"); shift ;;
    esac
done
[ "${#chosen[@]}" -gt 0 ] && targets=("${chosen[@]}")
# --runs alone runs until the count is reached; otherwise 30 s unless --time says.
if [ -z "$time_per_target" ]; then
    if [ -n "$runs" ]; then time_per_target=86400; else time_per_target=30; fi
fi

if ! command -v rustup >/dev/null 2>&1; then
    echo "fuzz: rustup not found; install Rust with rustup first (https://rustup.rs)" >&2
    exit 1
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
cargo +nightly fetch --locked --manifest-path fuzz/Cargo.toml
[ "$install_only" = 1 ] && exit 0

# No sanitizer: the crate forbids `unsafe`, so AddressSanitizer would only slow the search;
# debug assertions on, so that an arithmetic overflow is a crash as in a debug build.
flags=(--sanitizer none --debug-assertions)
start=$SECONDS
nice cargo +nightly fuzz build "${flags[@]}"
echo "fuzz: built the targets in $((SECONDS - start)) s" >&2

# The directory and audit targets write each input to files: keep them in RAM, and remove
# them afterwards.
scratch="$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/p11kms-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

limits=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1)
[ -n "$runs" ] && limits+=("-runs=$runs")
for t in "${targets[@]}"; do
    # Inputs up to 16 KiB (the real segments and directory files of the seeds are up to 12
    # KiB); a ciphertext blob of the largest plaintext (4 KiB) is 4145 bytes.
    max_len=16384
    [ "$t" = ciphertext ] && max_len=4200
    mkdir -p "fuzz/corpus/$t"
    echo "fuzz: $t for ${runs:+$runs runs or }${time_per_target} s" >&2
    start=$SECONDS
    if ! TMPDIR="$scratch" nice cargo +nightly fuzz run "${flags[@]}" "$t" \
        "fuzz/corpus/$t" "fuzz/seeds/$t" -- "${limits[@]}" "-max_len=$max_len" \
        "-max_total_time=$time_per_target" \
        2> >(tee "$scratch/$t.log" | grep -a -E '^(#[0-9]+[[:space:]]+DONE|stat::|==|SUMMARY|Done)' >&2); then
        mkdir -p "fuzz/artifacts/$t"
        cp "$scratch/$t.log" "fuzz/artifacts/$t/last-run.log"
        grep -a -A3 -E 'panicked at|ERROR: libFuzzer|^Failing input' "$scratch/$t.log" | head -n 30 >&2
        echo "fuzz: $t FAILED after $((SECONDS - start)) s; the input is in fuzz/artifacts/$t/," \
            "the whole log in fuzz/artifacts/$t/last-run.log" >&2
        exit 1
    fi
    files=$(find "fuzz/corpus/$t" -type f | wc -l)
    bytes=$(find "fuzz/corpus/$t" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    echo "fuzz: $t passed in $((SECONDS - start)) s; fuzz/corpus/$t: $files files, $bytes bytes" >&2
done
