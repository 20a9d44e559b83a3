"""schemathesis hooks for scripts/fuzz-api.sh (docs/decisions/013-api-fuzzing.md).

Two checks on top of schemathesis' own:

- `refused_request_changes_nothing`: a POST, PATCH, PUT or DELETE answered
  with a 4xx leaves the server as it was. The state (every listing, the
  pool's space, the settings) is read just before the request, once
  background work has settled, and again after the answer.
- `unauthenticated_request_is_refused` (only with FUZZ_EXPECT_401=1, for the
  run without a token): every request is answered 401.

The state is compared per request, so the run must use one worker.
Environment: BLOCKFORK_API (http://HOST:PORT/api/v1), BLOCKFORK_API_TOKEN.
"""

import json
import os
import time

import requests
import schemathesis

API = os.environ["BLOCKFORK_API"]
EXPECT_UNAUTHORIZED = os.environ.get("FUZZ_EXPECT_401") == "1"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# What a request could change. /jobs is left out: its finished jobs are
# history, and running ones are waited for (see settled_state).
STATE_PATHS = [
    "/luns",
    "/snapshots",
    "/group-snapshots",
    "/igroups",
    "/lun-maps",
    "/splits",
    "/pool",
    "/settings",
]
# Longest wait for reclaim jobs and running splits to finish before a
# request; they change space and listings on their own.
SETTLE_S = 20
REQUEST_TIMEOUT_S = 30

_session = requests.Session()
_session.headers["Authorization"] = "Bearer " + os.environ["BLOCKFORK_API_TOKEN"]
# The state before the request in flight, by id(case): one worker, so at
# most one entry.
_before = {}


def server_state():
    state = {}
    for path in STATE_PATHS:
        r = _session.get(API + path, timeout=REQUEST_TIMEOUT_S)
        r.raise_for_status()
        state[path] = r.json()
    return state


def settled_state():
    """The state once reclaim jobs and running splits are done, read twice
    alike: reading it takes several requests, and background work that
    ends between them would show up as a change made by the next request."""
    deadline = time.monotonic() + SETTLE_S
    last = None
    while True:
        state = server_state()
        busy = state["/pool"]["jobs_running"] > 0 or any(
            s["state"] == "running" for s in state["/splits"]
        )
        if not busy and state == last:
            return state
        if time.monotonic() > deadline:
            raise RuntimeError(f"background work did not settle in {SETTLE_S} s")
        last = None if busy else state
        if busy:
            time.sleep(0.05)


def describe_change(before, after):
    lines = []
    for path in STATE_PATHS:
        if before[path] != after[path]:
            lines.append(f"  {path}\n    before: {json.dumps(before[path])}\n    after:  {json.dumps(after[path])}")
    return "\n".join(lines)


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() in MUTATING:
        _before.clear()
        _before[id(case)] = settled_state()


@schemathesis.check
class refused_request_changes_nothing:
    def __init__(self):
        # (method, path) of the operations whose refusals were verified.
        self.verified = set()

    def after_response(self, ctx, response, case):
        if case.method.upper() not in MUTATING or not 400 <= response.status_code < 500:
            return None
        before = _before.get(id(case))
        if before is None:
            raise AssertionError("no state was recorded before this request (is the run on one worker?)")
        after = server_state()
        if after != before:
            raise AssertionError(
                f"refused with {response.status_code} but changed the server:\n" + describe_change(before, after)
            )
        self.verified.add((case.method.upper(), case.operation.path))
        return None

    def after_run(self, ctx):
        summary = "\n".join(f"{m} {p}" for m, p in sorted(self.verified))
        if os.environ.get("FUZZ_SUMMARY_FILE"):
            with open(os.environ["FUZZ_SUMMARY_FILE"], "w") as f:
                f.write(summary + "\n")
        if not self.verified:
            raise AssertionError("no refused request was checked for changes: are the hooks wired up?")


@schemathesis.check
def unauthenticated_request_is_refused(ctx, response, case):
    if EXPECT_UNAUTHORIZED and response.status_code != 401:
        raise AssertionError(f"answered {response.status_code} without a valid token, not 401")
    return None
