"""Schemathesis hooks for infra/scripts/fuzz.sh: a check that every request paykey refuses
(any 4xx answer, which includes every request the document calls invalid, since the built-in
`negative_data_rejection` check makes those 4xx) changes nothing in the stores.

The stores are read from the local stack's data file, which it writes before answering; the
stack runs without its key sweeper, and both reads wait until the Stripe emulator has no
webhook left to deliver, so the only changes between the two reads are the request's own.
Runs with one worker (requests one at a time)."""

import json
import os
import time
import urllib.request

import schemathesis

STATE_FILE = os.environ["PAYKEY_STATE_FILE"]
BASE = os.environ["PAYKEY_BASE"]
_before = {}


def _quiet():
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with urllib.request.urlopen(BASE + "/stripe/_emulator/undelivered", timeout=5) as r:
            if json.load(r)["undelivered"] == 0:
                return
        time.sleep(0.02)
    raise AssertionError("the Stripe emulator still has webhooks to deliver after 10 s")


def _stores():
    _quiet()
    with open(STATE_FILE, encoding="utf-8") as f:
        s = json.load(f)
    return {k: s[k] for k in ("sessions", "accounts", "events", "keys", "cognito", "stripe")}


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    _before[id(case)] = _stores()


@schemathesis.check
def refused_requests_change_nothing(ctx, response, case):
    before = _before.pop(id(case), None)
    if before is None or not 400 <= response.status_code < 500:
        return None
    after = _stores()
    changed = sorted(k for k in before if before[k] != after[k])
    if changed:
        raise AssertionError(
            f"{case.method} {case.formatted_path} was answered {response.status_code} but changed {', '.join(changed)}"
        )
    return True
