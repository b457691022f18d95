import base64
import os

import pytest


def host_key(seed: int = 0) -> str:
    """A syntactically real ssh-ed25519 public key line (type string + 32 key bytes)."""
    blob = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes([seed]) * 32
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


AGE_A = "age1" + "q" * 58
AGE_B = "age1" + "p" * 58


@pytest.fixture
def raw_config():
    return {
        "cacheHost": {"name": "cache", "host": "100.64.0.10", "hostKey": host_key(1)},
        "agents": [
            {"name": "agent-1", "host": "100.64.0.11", "hostKey": host_key(2), "ageRecipient": AGE_A,
             "tags": ["tag:nx-agent"], "taskSlots": 4},
            {"name": "agent-2", "host": "100.64.0.12", "hostKey": host_key(3), "ageRecipient": AGE_B},
        ],
        "sops": {"operatorRecipients": [AGE_A]},
    }
