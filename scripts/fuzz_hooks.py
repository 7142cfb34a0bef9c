"""Schemathesis hooks of scripts/fuzz-api.sh (SCHEMATHESIS_HOOKS names this file), run inside
Schemathesis before and after each request:

1. The fuzzer's token belongs to the bootstrap admin agent, an agent of the organization like
   the ones it creates: the stateful phase and the identifiers Schemathesis learns from
   responses would sooner or later suspend or decommission it, or revoke or rotate its
   credential, and every later request would be a 401 that tests nothing. Requests that would
   change that one agent (anything but GET under /api/v1/agents/<admin id>) go to a decoy
   agent made for the purpose instead. (Not to an id that does not exist: its 404 would fail
   the check that a resource the stateful phase just created can be found, whenever
   Schemathesis fills the id of its next request with the admin's, which it learnt from a
   list.) Every other agent is fair game.
2. Schemathesis infers no usable link to rotate or revoke a credential (they need the agent's
   id and the credential's, together), so on its own it reaches only their 404s. The hook
   remembers each (agent, credential) pair the API returns, and in half of the positive cases
   of those two operations (chosen from the generated ids, so the run stays reproducible)
   sends one of the eight latest pairs instead: rotation's 200 and 409 and revocation's 204
   and 409 get tested.
3. An organization's discovery documents are found only under an existing organization's id,
   which Schemathesis cannot learn from any response: in half of the positive cases of those
   operations the hook sends the fuzzer's own organization's id, so their 200s get tested.

The two agents' ids and the organization's come from the environment: FUZZ_ADMIN_AGENT_ID,
FUZZ_DECOY_AGENT_ID and FUZZ_ORG_ID.
"""

import os
import zlib

import schemathesis

PROTECTED_AGENT_ID = os.environ["FUZZ_ADMIN_AGENT_ID"]
DECOY_AGENT_ID = os.environ["FUZZ_DECOY_AGENT_ID"]
ORG_ID = os.environ["FUZZ_ORG_ID"]
CREDENTIALS = "/api/v1/agents/{agentId}/credentials"
ONE_CREDENTIAL = {CREDENTIALS + "/{credentialId}", CREDENTIALS + "/{credentialId}/rotate"}
known_pairs = []


def is_negative(case):
    meta = case.meta
    return meta is not None and meta.generation.mode.is_negative


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if not params:
        return
    if "orgId" in params and not is_negative(case):
        if zlib.crc32(repr(sorted(params.items())).encode()) % 2 == 0:
            params["orgId"] = ORG_ID
    if case.operation.path in ONE_CREDENTIAL and known_pairs and not is_negative(case):
        pick = zlib.crc32(repr(sorted(params.items())).encode())
        if pick % 2 == 0:
            recent = known_pairs[-8:]
            params["agentId"], params["credentialId"] = recent[pick // 2 % len(recent)]
    if params.get("agentId") == PROTECTED_AGENT_ID and case.method.upper() != "GET":
        params["agentId"] = DECOY_AGENT_ID


@schemathesis.hook
def after_call(context, case, response):
    agent_id = (case.path_parameters or {}).get("agentId")
    if case.operation.path != CREDENTIALS or agent_id == PROTECTED_AGENT_ID:
        return
    if response.status_code not in (200, 201):
        return
    try:
        body = response.json()
        credentials = body["data"] if response.status_code == 200 else [body]
        pairs = [(agent_id, credential["credentialId"]) for credential in credentials]
    except (ValueError, KeyError, TypeError):
        return  # not the declared body: the checks report it
    for pair in pairs:
        if pair not in known_pairs:
            known_pairs.append(pair)
