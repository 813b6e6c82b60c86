#!/usr/bin/env bash
# Schemathesis against the local stack, over every route of infra/openapi/openapi.json (as the
# stack serves it: its server, its catalog's lookup keys), as a signed-in user (an ID token of
# the local Cognito), in every phase (examples, coverage, fuzzing) and mode (valid and invalid
# data). Every check Schemathesis has runs (infra/openapi/schemathesis.toml says which are
# off where, and why): no 5xx; status, content type, headers and body conform to the
# document; valid data is accepted and invalid data rejected; routes refuse a missing token.
# infra/openapi/st_hooks.py adds one: a refused request (4xx) changes nothing in the stores.
#
#   bash infra/scripts/fuzz.sh SCHEMATHESIS PAYKEY_LOCAL_BIN [MAX_EXAMPLES]
set -euo pipefail
st=$1
local_bin=$2
max_examples=${3:-100}
root=$(cd "$(dirname "$0")/../.." && pwd)
config=$root/infra/openapi/schemathesis.toml
work=$(mktemp -d)
log=$work/local.log
# no key sweeper: the stores change only on requests (and the webhooks they cause)
PAYKEY_PORT=0 PAYKEY_SWEEP_SECONDS=0 PAYKEY_DATA_DIR=$work/data RUST_LOG=warn "$local_bin" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
base=
for _ in $(seq 1 100); do
  base=$(sed -n 's/^paykey local stack on //p' "$log" | head -n1)
  [ -n "$base" ] && break
  kill -0 $pid 2>/dev/null || { cat "$log"; echo "paykey-local did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$base" ] || { cat "$log"; echo "paykey-local printed no URL" >&2; exit 1; }
creds='{"username":"fuzzer","password":"correct horse battery"}'
curl -sf -X POST "$base/cognito/sign-up" -H 'content-type: application/json' -d "$creds" >/dev/null
token=$(curl -sf -X POST "$base/cognito/sign-in" -H 'content-type: application/json' -d "$creds" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["AuthenticationResult"]["IdToken"])')
export PAYKEY_BASE=$base PAYKEY_STATE_FILE=$work/data/state.json
export SCHEMATHESIS_HOOKS=st_hooks PYTHONPATH=$root/infra/openapi${PYTHONPATH:+:$PYTHONPATH}
"$st" --config-file "$config" run "$base/openapi.json" -H "Authorization: $token" \
  --max-examples "$max_examples" --seed 20261202 --workers 1 --no-color --request-timeout 30 2>&1 | tee "$work/st.log"
status=${PIPESTATUS[0]}
generated=$(awk '/^ *[0-9]+ generated/ { s += $1 } END { print s + 0 }' "$work/st.log")
if [ "$status" != 0 ]; then
  echo "schemathesis: FAILED after $generated generated requests" >&2
  exit 1
fi
echo "schemathesis: $generated generated requests, no failure"
