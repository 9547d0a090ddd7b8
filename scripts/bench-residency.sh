#!/bin/bash
# Issue 19 figures (docs/benchmarks.md): token vs wrapped residency, interleaved.
# Build first: cargo build --release --features bench --bins
set -euo pipefail
cd "$(dirname "$0")/.."
B=${CARGO_TARGET_DIR:-target}/release/p11kms-bench
for r in 1 2; do
  $B --suite crypto --ops encrypt,create-key --concurrency 1,32 --duration 5 | sed "s/^{/{\"residency\":\"token\",\"round\":$r,/"
  $B --suite crypto --ops encrypt,create-key --concurrency 1,32 --duration 5 --wrapped | sed "s/^{/{\"residency\":\"wrapped\",\"round\":$r,/"
done
$B --suite crypto --ops encrypt --concurrency 1,32 --duration 5 --wrapped --wrapped-cache 0 | sed "s/^{/{\"residency\":\"wrapped-cache-0\",\"round\":1,/"
