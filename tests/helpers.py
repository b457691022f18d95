"""Small builders shared by test modules."""

import base64


def host_key(seed: int = 0) -> str:
    """A syntactically real ssh-ed25519 public key line (type string + 32 key bytes)."""
    blob = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes([seed]) * 32
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


AGE_A = "age1" + "q" * 58
AGE_B = "age1" + "p" * 58
