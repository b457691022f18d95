"""Trust tiers end to end: real agents, real Nx, the real cache server. The agent decides a
task's tier from the commit (reachable from the protected branch `main` or not), whatever the
orchestrator's cache URL claims, and writes untrusted outputs only into a namespace."""

from __future__ import annotations

import secrets

import pytest

from cache_server.auth import Scope, token_line
from nxfarm.demo.workspace import git
from tests.nx_client.workspace import NX_BIN

from .farm_procs import LocalFarm, final_pass_rows
from .farm_workspace import PROJECTS, FarmWorkspace

pytestmark = pytest.mark.skipif(not NX_BIN.exists(), reason="nx client not installed (make test installs it)")
PR_TOKEN = "pull-request-ci-token-7c1d"


@pytest.fixture
def farm(tmp_path):
    farm = LocalFarm(tmp_path / "farm", agents=1)
    with farm.tokens_file.open("a") as tokens:
        tokens.write(token_line("pr-ci", Scope.READWRITE, PR_TOKEN, ("pr-1",)))
    farm.start_cache()
    farm.start_scheduler()
    farm.start_agent("agent-1")
    yield farm
    farm.stop()


def entries(farm) -> set[str]:  # noqa: ANN001
    return {path.name for path in farm.entry_files()}


def push_pull_request(workspace: FarmWorkspace) -> str:
    git(workspace.root, "checkout", "--quiet", "-b", "pr-1")
    for name, (project_root, _) in workspace.projects.items():
        (workspace.root / project_root / "src" / "index.js").write_text(f"// {name} from a pull request\n")
    git(workspace.root, "commit", "--quiet", "-am", "pull request")
    git(workspace.root, "push", "--quiet", "origin", "pr-1")
    git(workspace.root, "fetch", "--quiet", "origin")
    return git(workspace.root, "rev-parse", "HEAD").strip()


def test_agents_write_trusted_only_for_protected_commits(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    result = farm.build(workspace.root)
    assert result.returncode == 0, result.stdout + result.stderr
    trusted_entries = entries(farm)
    assert len(trusted_entries) == len(PROJECTS) and all("_" not in name for name in trusted_entries)
    assert "on agent-1 [trusted]" in result.stdout and "[branch]" not in result.stdout

    # A pull request's build, from a CI job whose cache URL names its namespace.
    push_pull_request(workspace)
    workspace.clear_outputs()
    env = {**farm.orchestrator_env(tmp_path / "pr-home"),
           "NX_SELF_HOSTED_REMOTE_CACHE_SERVER": f"{farm.cache_url}/ns/pr-1",
           "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN": PR_TOKEN}
    result = farm.build(workspace.root, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = final_pass_rows(result.stdout)
    assert {ran for ran, _ in rows.values()} == {"agent-1"}
    assert all(final == "remote cache" for _, final in rows.values()), rows  # found through its namespace
    new = entries(farm) - trusted_entries
    assert len(new) == len(PROJECTS) and all(name.endswith("_pr-1") for name in new), new
    assert "on agent-1 [branch]" in result.stdout and "[trusted]" not in result.stdout

    # The same pull-request commit, asked for by a trusted orchestrator: the agent still
    # decides from the commit, and keeps its outputs out of the trusted namespace.
    workspace.clear_outputs()
    before = entries(farm)
    result = farm.build(workspace.root, env=farm.orchestrator_env(tmp_path / "trusted-home"))
    assert result.returncode == 0, result.stdout + result.stderr
    added = entries(farm) - before
    assert len([name for name in added if name.endswith("_untrusted")]) == len(PROJECTS), added
    assert not [name for name in added if name.endswith("_pr-1")]
    assert "on agent-1 [branch]" in result.stdout
    agent_log = farm.agents["agent-1"].log.read_text()
    assert PR_TOKEN not in agent_log and farm.token not in agent_log
