"""The signing-key secrets of a local run, on moto's Secrets Manager (AGENTIDP_TEST_MOTO_ENDPOINT):

    python scripts/fixture_secrets.py PREFIX    # prints: SIGNING_ARN PUBLIC_ARN ROTATION_ARN

- PREFIX-signing-keys: the fixture's key set (events/fixture/signing-keys.json), which signed
  the bearer tokens of the sample events; the tokens function reads it;
- PREFIX-public-keys: its public keys as the rotation publishes them (a JWKS), for the functions
  that only verify tokens: a wrong key there fails their bearer events;
- PREFIX-rotation: the key set again, for the rotation function to rotate (it publishes to the
  public one).

Needs boto3 and cryptography (the packaging virtual environment has both).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import boto3
from cryptography.hazmat.primitives.serialization import load_pem_private_key

KEY_SET = Path(__file__).resolve().parent.parent / "events" / "fixture" / "signing-keys.json"


def _coordinate(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


def public_jwks(key_set: str) -> str:
    jwks = []
    for key in json.loads(key_set)["keys"]:
        if key["alg"] != "ES256":
            raise ValueError("the fixture's keys are ES256; publish other kinds here too")
        point = load_pem_private_key(key["privateKeyPem"].encode(), None).public_key().public_numbers()
        jwks.append(
            {"kty": "EC", "use": "sig", "alg": "ES256", "kid": key["kid"], "crv": "P-256", "x": _coordinate(point.x), "y": _coordinate(point.y)}
        )
    return json.dumps({"keys": jwks})


def create(prefix: str, endpoint: str) -> tuple[str, str, str]:
    """The three secrets' ARNs: signing keys, public keys, the one to rotate."""
    client = boto3.client("secretsmanager", endpoint_url=endpoint)
    keys = KEY_SET.read_text()
    values = (("-signing-keys", keys), ("-public-keys", public_jwks(keys)), ("-rotation", keys))
    signing, public, rotation = (client.create_secret(Name=prefix + suffix, SecretString=value)["ARN"] for suffix, value in values)
    return signing, public, rotation


if __name__ == "__main__":
    print(*create(sys.argv[1], os.environ["AGENTIDP_TEST_MOTO_ENDPOINT"]))
