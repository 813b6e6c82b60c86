#!/usr/bin/env bash
# Builds every Lambda for arm64 (provided.al2023) with cargo-lambda and zig from PyPI, as
# `sam build` does, and prints the size of each bootstrap binary.
#   bash infra/scripts/build-lambdas.sh [--x86-64]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cache=${PAYKEY_CACHE:-$HOME/.cache/paykey}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
export PATH="$cache/venv/bin:$PATH"
command -v cargo-lambda >/dev/null || { echo "cargo-lambda missing: run infra/scripts/test.sh first (it installs the Python tools)"; exit 1; }
arch_flag=--arm64
triple=aarch64-unknown-linux-gnu
if [ "${1:-}" = "--x86-64" ]; then arch_flag=--x86-64; triple=x86_64-unknown-linux-gnu; fi
rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
functions=(create-checkout-session create-api-key create-billing-portal get-account stripe-webhook)
pkgs=()
for f in "${functions[@]}"; do pkgs+=(-p "$f"); done
# and the benchmarks' floor (hello-world lambda_http), built the same way, for size comparison
pkgs+=(-p hello-floor)
printf '\n== cargo lambda build --release %s (%s)\n' "$arch_flag" "${functions[*]}"
cargo lambda build --release "$arch_flag" "${pkgs[@]}"
printf '\n%-26s %12s\n' function "bytes"
for f in "${functions[@]}" hello-floor; do
  bin=$CARGO_TARGET_DIR/lambda/$f/bootstrap
  [ -f "$bin" ] || { echo "missing $bin"; exit 1; }
  kind=$(command -v file >/dev/null && file -b "$bin" | cut -d, -f1-2 || echo "ELF")
  printf '%-26s %12s  (%s)\n' "$f" "$(stat -c %s "$bin")" "$kind"
done
