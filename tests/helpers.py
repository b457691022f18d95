"""Small builders shared by test modules."""

import base64


def host_key(seed: int = 0) -> str:
    """A syntactically real ssh-ed25519 public key line (type string + 32 key bytes)."""
    blob = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes([seed]) * 32
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


AGE_A = "age1" + "q" * 58
AGE_B = "age1" + "p" * 58


def fake_wheel_sets(directory, platforms=("cp311-x86_64",)):
    """Stand-ins for `make wheels` output, for tests that never install them: per platform, a wheel
    named for our package and for every pin of each role's lock (contents are placeholders)."""
    from components.wheelhouse import ROLES

    for role, (_, distribution, locks) in ROLES.items():
        pins = [line.split("#")[0].strip() for lock in locks for line in lock.read_text().splitlines()]
        for platform in platforms:
            target = directory / role / platform
            target.mkdir(parents=True, exist_ok=True)
            (target / f"{distribution}-0.1.0-py3-none-any.whl").write_bytes(b"wheel v1")
            for pin in filter(None, pins):
                name, version = pin.split("==")
                (target / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(pin.encode())
    return directory
