#!/usr/bin/env bash
# Builds the deployable functions exactly as an operator's `sam build` does (SAM CLI's
# rust-cargolambda workflow: `cargo lambda build --release --arm64 --bin <function>` from the
# workspace root, one function after the other, into .aws-sam/build/<Function>/bootstrap), then
# the benchmarks' hello-world floor the same way for comparison, and prints each binary's size.
#   bash infra/scripts/build-lambdas.sh
# Needs the tools infra/scripts/test.sh installs (SAM CLI, cargo-lambda, zig in the venv).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cache=${PAYKEY_CACHE:-$HOME/.cache/paykey}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
export PATH="$cache/venv/bin:$PATH"
export SAM_CLI_TELEMETRY=0
for tool in sam cargo-lambda; do
  command -v "$tool" >/dev/null || { echo "$tool missing: run infra/scripts/test.sh first (it installs the Python tools)"; exit 1; }
done
triple=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"

printf '\n== sam build (template.yaml, samconfig.toml; CARGO_TARGET_DIR=%s)\n' "$CARGO_TARGET_DIR"
start=$(date +%s)
sam build --template-file template.yaml
printf 'sam build took %s s\n' "$(($(date +%s) - start))"

# The floor, with the same command and the same workspace-wide feature resolution as sam's
# per-function builds, so it reuses their compiled dependencies.
printf '\n== cargo lambda build --release --arm64 --bin hello-floor, --bin tls-floor\n'
cargo lambda build --release --arm64 --bin hello-floor
cargo lambda build --release --arm64 --bin tls-floor

functions=$(python3 - <<'EOF'
import re
text = open("template.yaml").read()
for name, binary in re.findall(r"\n  (\w+):\n    Type: AWS::Serverless::Function\n    Metadata:\n      BuildMethod: rust-cargolambda\n      BuildProperties:\n        Binary: ([\w-]+)", text):
    print(name, binary)
EOF
)
[ -n "$functions" ] || { echo "no rust-cargolambda function found in template.yaml"; exit 1; }
# Size budget (issue 14): every deployable function at most 10,000,000 bytes, stripped, arm64.
# Not a timing: the same source and toolchain give the same size on any machine.
budget=10000000
over=""
printf '\n%-30s %-26s %12s\n' resource binary bytes
while read -r name binary; do
  bin=.aws-sam/build/$name/bootstrap
  [ -f "$bin" ] || { echo "missing $bin"; exit 1; }
  # ELF header: e_machine 183 is AArch64 (what Architectures: [arm64] runs)
  python3 -c 'import sys; h = open(sys.argv[1], "rb").read(20); sys.exit(0 if h[:4] == b"\x7fELF" and int.from_bytes(h[18:20], "little") == 183 else 1)' "$bin" \
    || { echo "$bin is not an arm64 ELF executable"; exit 1; }
  bytes=$(stat -c %s "$bin")
  printf '%-30s %-26s %12s  (ELF aarch64)\n' "$name" "$binary" "$bytes"
  [ "$bytes" -le "$budget" ] || over="$over $binary ($bytes bytes)"
done <<<"$functions"
[ -z "$over" ] || { echo "over the size budget of $budget bytes:$over (cargo bloat --release --crates -p <function> says what grew)"; exit 1; }
floor=$CARGO_TARGET_DIR/lambda/hello-floor/bootstrap
[ -f "$floor" ] || { echo "missing $floor"; exit 1; }
printf '%-30s %-26s %12s\n' "(floor)" hello-floor "$(stat -c %s "$floor")"
printf '%-30s %-26s %12s\n' "(TLS floor)" tls-floor "$(stat -c %s "$CARGO_TARGET_DIR/lambda/tls-floor/bootstrap")"
# The deploy reads .aws-sam/build/template.yaml: it must name every function's built artefact.
test -f .aws-sam/build/template.yaml
