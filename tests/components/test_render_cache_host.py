import os
import shutil
import subprocess

import pytest

from cache_server.auth import TokenStore
from components.render.cache_host import (
    AGENT_BRANCH_GRANT,
    TOKENS_PATH,
    cache_unit,
    cache_url,
    install_script,
    orchestrator_grant,
    remove_script,
    tokens_file,
    tokens_install_command,
)
from components.settings import ConfigInvalid, validate


@pytest.fixture
def cache(raw_config):
    return validate(raw_config).cache_host


def test_unit_passes_systemd_analyze_verify(cache, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    root = tmp_path / "opt"
    (root / "venv" / "bin").mkdir(parents=True)
    os.symlink(shutil.which("python3"), root / "venv" / "bin" / "python")
    unit = tmp_path / "nx-farm-cache.service"
    unit.write_text(cache_unit(cache, install_root=str(root)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_binds_only_where_told(cache):
    unit = cache_unit(cache)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--bind 100.64.0.10:3333 --bind 127.0.0.1:3333" in exec_start
    assert "0.0.0.0" not in unit and "--storage /var/lib/nx-farm/cache" in exec_start
    assert cache_url(cache) == "http://100.64.0.10:3333"


def test_ipv6_listen_address(raw_config):
    raw_config["cacheHost"]["host"] = "fd7a:115c:a1e0::1"
    cache = validate(raw_config).cache_host
    assert "--bind '[fd7a:115c:a1e0::1]:3333'" in cache_unit(cache)
    assert cache_url(cache) == "http://[fd7a:115c:a1e0::1]:3333"


def test_tokens_file_has_hashes_only_and_the_server_reads_it(tmp_path):
    grants = {"ci": orchestrator_grant("ci", "read"), "laptop": orchestrator_grant("laptop", "branch"),
              "agent-1-branch": AGENT_BRANCH_GRANT}
    tokens = {"agent-1": "secret-one", "ci": "secret-two", "laptop": "secret-three", "agent-1-branch": "secret-four"}
    text = tokens_file(tokens, grants)
    assert not [token for token in tokens.values() if token in text]
    path = tmp_path / "tokens"
    path.write_text(text)
    store = TokenStore(str(path))
    agent, ci = store.authenticate("Bearer secret-one"), store.authenticate("Bearer secret-two")
    laptop, branch = store.authenticate("Bearer secret-three"), store.authenticate("Bearer secret-four")
    assert agent.may_write and agent.may_use("trusted") and not agent.may_use("laptop")
    assert not ci.may_write
    assert laptop.may_use("laptop") and not laptop.may_use("trusted") and not laptop.may_use("other")
    assert branch.may_use("pr-7") and not branch.may_use("trusted")


def test_scripts_are_valid_shell_and_keep_data_unless_purged(cache):
    for script in (install_script(cache, "/opt/nx-farm/wheels"), remove_script(cache, False),
                   remove_script(cache, True), tokens_install_command()):
        assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert cache.storage_path not in remove_script(cache, purge=False)
    assert f"rm -rf {cache.storage_path}" in remove_script(cache, purge=True)
    assert TOKENS_PATH in tokens_install_command() and "/dev/stdin" in tokens_install_command()


def test_unit_runs_one_server_process_per_core_unless_told(raw_config):
    unit = cache_unit(validate(raw_config).cache_host)
    assert "--workers auto" in unit
    raw_config["cacheHost"]["workers"] = 3
    assert "--workers 3" in cache_unit(validate(raw_config).cache_host)


@pytest.mark.parametrize("value", [0, 65, "many"])
def test_bad_worker_count_names_the_field(raw_config, value):
    raw_config["cacheHost"]["workers"] = value
    with pytest.raises(ConfigInvalid, match="cacheHost.workers"):
        validate(raw_config)


def test_unit_lets_the_server_hold_many_connections(cache):
    """With systemd's default 1024 descriptors, about a thousand idle sockets stopped the server."""
    assert "\nLimitNOFILE=65536\n" in cache_unit(cache)


def test_max_entries_reaches_the_unit_only_when_set(raw_config):
    assert "--max-entries" not in cache_unit(validate(raw_config).cache_host)
    raw_config["cacheHost"]["maxEntries"] = 500000
    assert "--max-entries 500000" in cache_unit(validate(raw_config).cache_host)
    raw_config["cacheHost"]["maxEntries"] = -1
    with pytest.raises(ConfigInvalid, match="cacheHost.maxEntries"):
        validate(raw_config)
