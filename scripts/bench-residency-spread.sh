#!/bin/bash
# Issue 19 figures (docs/benchmarks.md): Encrypt at c=32 on keys drawn uniformly at random from
# 100,000 wrapped keys, against the raw cache-miss loop (tag check + unwrap + encrypt + destroy)
# in the same run: once with the default cache (4096 unwrapped keys per worker) and once with
# wrapped_cache = 0 (every request a miss).
# Build first: cargo build --release --features bench --bins
set -euo pipefail
cd "$(dirname "$0")/.."
B=${CARGO_TARGET_DIR:-target}/release/p11kms-bench
KEYS=${KEYS:-100000}
common=(--suite crypto --ops encrypt --concurrency 32 --duration 10 --wrapped
        --spread-keys "$KEYS" --seed-concurrency 32)
$B "${common[@]}" | sed 's/^{/{"cache":"default",/'
$B "${common[@]}" --wrapped-cache 0 | sed 's/^{/{"cache":"0",/'
