#!/usr/bin/env bash
# paykey's test command: installs what the tests need (moto_server into a venv), starts moto on
# a free loopback port, and runs formatting, lints and every test. Safe to run on a fresh
# machine; reuses ~/.cache/paykey (venv, cargo target dir) when present.
#
#   bash infra/scripts/test.sh            # everything
#   PAYKEY_QUICK=1 bash infra/scripts/test.sh   # skip lints
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cache=${PAYKEY_CACHE:-$HOME/.cache/paykey}
mkdir -p "$cache"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
venv=$cache/venv
MOTO_VERSION=5.2.5
# Pinned Python tools: moto for the AWS adapters, cfn-lint and SAM CLI for template.yaml,
# pytest for the template assertions, cargo-lambda + zig for the Lambda builds, stripe (with
# moto's boto3) for the benchmarks' Python reference.
PY_TOOLS="moto[server]==$MOTO_VERSION cfn-lint==1.58.0 aws-sam-cli==1.170.0 pytest==9.2.0 cargo-lambda==1.9.2 ziglang==0.17.1 stripe==16.1.0"

step() { printf '\n== %s\n' "$*"; }

step "python tools in $venv: $PY_TOOLS"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp=$venv/.paykey-tools
if [ "$(cat "$stamp" 2>/dev/null)" != "$PY_TOOLS" ]; then
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $PY_TOOLS
  echo "$PY_TOOLS" >"$stamp"
fi
export PATH="$venv/bin:$PATH"

# Checkov pins its own boto3 and friends, older than SAM CLI's: it gets a venv of its own.
CHECKOV_VERSION=3.3.30
checkov_venv=$cache/checkov-venv
step "checkov $CHECKOV_VERSION in $checkov_venv"
if [ ! -x "$checkov_venv/bin/python" ]; then
  python3 -m venv "$checkov_venv"
fi
if [ "$(cat "$checkov_venv/.paykey-tools" 2>/dev/null)" != "checkov==$CHECKOV_VERSION" ]; then
  "$checkov_venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  echo "checkov==$CHECKOV_VERSION" >"$checkov_venv/.paykey-tools"
fi
export PAYKEY_CHECKOV=$checkov_venv/bin/checkov

# Schemathesis (the OpenAPI fuzzer) pins its own hypothesis and pytest: a venv of its own too.
SCHEMATHESIS_VERSION=4.32.5
st_venv=$cache/schemathesis-venv
step "schemathesis $SCHEMATHESIS_VERSION in $st_venv"
if [ ! -x "$st_venv/bin/python" ]; then
  python3 -m venv "$st_venv"
fi
if [ "$(cat "$st_venv/.paykey-tools" 2>/dev/null)" != "schemathesis==$SCHEMATHESIS_VERSION" ]; then
  "$st_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  echo "schemathesis==$SCHEMATHESIS_VERSION" >"$st_venv/.paykey-tools"
fi

step "moto_server on loopback"
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_log=$(mktemp)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
moto_pid=$!
cleanup() { kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; rm -f "$moto_log"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  if curl -sf -X POST "http://127.0.0.1:$port/moto-api/reset" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$moto_pid" 2>/dev/null; then cat "$moto_log"; echo "moto_server did not start" >&2; exit 1; fi
  sleep 0.2
done
export PAYKEY_MOTO_URL="http://127.0.0.1:$port"
echo "moto_server $MOTO_VERSION at $PAYKEY_MOTO_URL"

if [ -z "${PAYKEY_QUICK:-}" ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
fi

step "rust-version: the workspace declares at least what its dependencies require"
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
d = json.load(sys.stdin)
members = set(d["workspace_members"])
v = lambda s: tuple(int(x) for x in s.split("."))
ours = min(v(p["rust_version"]) for p in d["packages"] if p["id"] in members)
need = max((v(p["rust_version"]), p["name"]) for p in d["packages"] if p["id"] not in members and p.get("rust_version"))
print("workspace rust-version %s; highest of the dependencies %s (%s)" % (".".join(map(str, ours)), ".".join(map(str, need[0])), need[1]))
sys.exit(0 if ours >= need[0] else "raise [workspace.package] rust-version in Cargo.toml")
'

step "template.yaml: cfn-lint, sam validate --lint; the SAM transform, assertions on its output, Checkov"
cfn-lint --version
cfn-lint template.yaml
SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1} sam validate --lint --template template.yaml
log=$cache/last-test.log
# infra/tests/test_template.py runs the SAM transform CloudFormation runs (samtranslator from
# the pinned SAM CLI) offline and asserts on the transformed template; it also runs Checkov.
AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1} python -m pytest -q infra/tests 2>&1 | tee "$log"

# Every binary a test starts as a child process (the functions and the hello-world floor under
# the benchmarks' Runtime API emulator, paykey-local in the browser test) is built here first:
# `cargo test` only builds the binaries of the package whose tests it runs.
# The React front end (infra/web): its client typed from infra/openapi/openapi.json, type-checked
# and built; the local stack serves the build (the browser test drives it).
step "front end: npm ci, openapi-typescript, tsc, vite build (infra/web)"
(cd infra/web && npm ci --no-audit --no-fund --loglevel=error && npm run build)
echo "front end build: $(du -sb infra/web/dist | cut -f1) bytes ($(cat infra/web/dist/assets/*.js | gzip -9 | wc -c) bytes of JavaScript gzipped)"

step "cargo build --workspace --bins (binaries the tests run as child processes)"
cargo build --workspace --bins

# Every request that reaches the Stripe emulator over HTTP from here on (paykey's adapter, the
# functions, paykey-setup, the local stack) is captured with its answer for the Stripe oracle.
stripe_capture=$(mktemp -d)
export STRIPE_EMULATOR_CAPTURE=$stripe_capture

step "cargo test (flows, handlers, adapter contracts on memory, moto and the Stripe emulator, local stack e2e)"
cargo test --workspace --lib --bins --tests 2>&1 | tee -a "$log"

# The usage-based billing walk again, with its numbers shown (cargo test hides a passing test's
# output): 1,200 calls on a tier that includes 1,000, the period's invoice. `--workspace` keeps the
# feature set of the step above, so nothing recompiles (`-p paykey-local` rebuilt it: ~3 min);
# it also runs the memory metering tests (shared/tests/metering.rs) in the same seconds.
step "usage-based billing over HTTP on the local stack, numbers printed"
cargo test --workspace --test metering -- --nocapture 2>&1 | grep -E '^(# |test |test result)' | tee -a "$log"

step "schemathesis: the local stack against infra/openapi/openapi.json (every route, phase and mode)"
bash infra/scripts/fuzz.sh "$st_venv/bin/schemathesis" "$CARGO_TARGET_DIR/debug/paykey-local" 2>&1 | tee -a "$log"

step "browser test: headless Chromium (Debian) driven by playwright-core"
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium"
  if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
  $apt_get update -qq
  DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq chromium >/dev/null
fi
if [ ! -d infra/e2e/node_modules/playwright-core ]; then
  (cd infra/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
export PAYKEY_ARTIFACTS=$root/artifacts/screenshots
PAYKEY_LOCAL_BIN=$CARGO_TARGET_DIR/debug/paykey-local CHROMIUM_PATH=$(command -v chromium) \
  node --test infra/e2e/browser.test.mjs 2>&1 | tee -a "$log"

step "Stripe oracle: every captured request and answer type-checked against stripe-node's declarations (infra/stripe-oracle)"
unset STRIPE_EMULATOR_CAPTURE
(cd infra/stripe-oracle && npm ci --no-audit --no-fund --loglevel=error)
node infra/stripe-oracle/check.mjs --self-test 2>&1 | tee -a "$log"
node infra/stripe-oracle/check.mjs "$stripe_capture" 2>&1 | tee -a "$log"
rm -rf "$stripe_capture"

# One closing line for the whole run (cargo prints one per test binary; pytest and node one each).
awk '/^test result:/ || /^[0-9]+ (passed|failed)/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "\ntotal: %d passed, %d failed\n", p, f }' "$log"
