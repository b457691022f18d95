"""The justfile keeps the seed's instructions working: its recipes are the seed's names, and each
runs the real command (the two long-running ones are checked with `just --dry-run`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyrage

ROOT = Path(__file__).resolve().parents[1]
JUST = str(Path(sys.executable).with_name("just"))
SEED_RECIPES = {"nx-init", "nx-cache-server-start", "nx-start-agent", "nx-distributed-build", "nx-discover-agents",
                "nx-encrypt-config"}


def just(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JUST, "--justfile", str(ROOT / "justfile"), *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_recipes_are_the_seeds_and_the_seed_mentions_no_other():
    recipes = set(just("--summary").stdout.split())
    assert recipes == SEED_RECIPES
    seed = (ROOT.parent / "shared" / "seed")
    if seed.is_dir():
        mentioned = {m for f in seed.glob("*.txt") for m in re.findall(r"just (nx-[a-z-]+)", f.read_text())}
        assert mentioned <= recipes


def test_encrypt_config_writes_a_file_only_that_recipient_opens(tmp_path):
    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra" / "nx-agents.env").write_text("NX_SHARED_SECRET=s3cret\n")
    result = just("nx-encrypt-config", cwd=tmp_path, env={"AGE_RECIPIENT": str(identity.to_public())})
    assert result.returncode == 0, result.stderr
    encrypted = (tmp_path / "infra" / "nx-agents.env.sops").read_text()
    assert "s3cret" not in encrypted
    (tmp_path / "key").write_text(str(identity) + "\n")
    sops = Path(sys.executable).with_name("sops")
    plain = subprocess.run([str(sops), "decrypt", "--input-type", "dotenv", "--output-type", "dotenv",
                            str(tmp_path / "infra" / "nx-agents.env.sops")], capture_output=True, text=True,
                           env={**os.environ, "SOPS_AGE_KEY_FILE": str(tmp_path / "key")})
    assert plain.stdout == "NX_SHARED_SECRET=s3cret\n", plain.stderr


def test_discover_and_init_run_in_the_callers_directory(tmp_path):
    status = ROOT / "tests" / "fixtures" / "tailscale" / "status-running.json"
    via_just = just("nx-discover-agents", "--from", str(status), "--stack-file", str(ROOT / "Pulumi.homelab.yaml"))
    direct = subprocess.run([str(Path(sys.executable).with_name("nxfarm")), "discover", "--from", str(status),
                             "--stack-file", str(ROOT / "Pulumi.homelab.yaml")], capture_output=True, text=True)
    assert via_just.returncode == 0 and via_just.stdout == direct.stdout
    (tmp_path / "nx.json").write_text(json.dumps({}))
    result = just("nx-init", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0 and "dry run:" in result.stdout and not (tmp_path / ".envrc").exists()


def test_distributed_build_honours_dry_run(tmp_path):
    nx_bin = ROOT / "tests" / "nx_client" / "node_modules"
    (tmp_path / "nx.json").write_text(json.dumps({"targetDefaults": {"build": {"cache": True}}}))
    (tmp_path / "package.json").write_text(json.dumps({"name": "ws", "private": True}))
    (tmp_path / "node_modules").symlink_to(nx_bin)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "project.json").write_text(json.dumps({"name": "a", "targets": {"build": {
        "executor": "nx:run-commands", "options": {"command": "echo a"}}}}))
    env = {k: "" for k in os.environ if k.startswith(("NX_SELF_HOSTED", "NXFARM_"))}
    result = just("nx-distributed-build", "build", cwd=tmp_path,
                  env={**env, "DRY_RUN": "1", "DEPLOY_CONFIRM": "yes", "NX_DAEMON": "false", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run: nothing was run" in result.stdout and "a:build" in result.stdout


def test_long_running_recipes_call_the_real_commands():
    assert just("--dry-run", "nx-start-agent").stderr.strip().endswith(".venv/bin/nxfarm restart nx-farm-agent.service")
    assert ".venv/bin/python -m cache_server --bind 127.0.0.1:3333" in \
        just("--dry-run", "nx-cache-server-start", "--bind", "127.0.0.1:3333").stderr
