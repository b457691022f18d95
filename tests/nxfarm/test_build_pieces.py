"""The pure parts of `nxfarm build` and the agent: which tasks go out, what is printed, how
a slot installs, how TLS material is read."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from nxfarm.agent.checkout import install_command, lockfile_digest
from nxfarm.agent.task import nx_env, restored_from
from nxfarm.build.dispatch import Outcome, eligible_tasks
from nxfarm.build.nx import NxInvocation, classify
from nxfarm.build.report import final_table, plan_text, summary
from nxfarm.farm import security
from nxfarm.farm.protocol import TaskResult
from nxfarm.farm.tls import new_ca, issue, write_cluster
from nxfarm.probe.task_graph import parse_task_graph

FIXTURES = Path(__file__).parents[1] / "fixtures" / "nx"


def graph_with(**overrides):
    document = json.loads((FIXTURES / "nx24-diamond.graph.json").read_text())
    for task_id, fields in overrides.items():
        document["tasks"]["tasks"][task_id].update(fields)
    return parse_task_graph(document)


def test_a_task_depending_on_a_local_only_task_stays_local_too():
    graph = graph_with()
    assert eligible_tasks(graph) == set(graph.tasks)
    first = graph.levels()[0][0]
    graph = graph_with(**{first: {"cache": False}})
    assert eligible_tasks(graph) == set(), "everything depends on the root of the diamond"
    last = graph.levels()[-1][0]
    graph = graph_with(**{last: {"continuous": True}})
    assert eligible_tasks(graph) == set(graph.tasks) - {last}


def test_plan_names_where_each_task_runs_and_why():
    graph = graph_with()
    leaf = graph.levels()[-1][0]
    graph = graph_with(**{leaf: {"cache": False}})
    text = plan_text(graph, eligible_tasks(graph), {"agent-1": 2, "agent-2": 1}, "distributing over 2 worker(s)", True)
    assert any(line.split()[1:] == [leaf, "here", "(not", "cacheable)"] for line in text.splitlines()[3:])
    assert "eligible agents: agent-1 (2 slots), agent-2 (1 slot)" in text
    local = plan_text(graph, set(), {}, "fallback: ...", False)
    assert "an agent" not in local and "eligible agents" not in local


def test_final_table_and_summary_report_each_task():
    graph = graph_with()
    tasks = [task for level in graph.levels() for task in level]
    outcomes = {tasks[0]: Outcome(tasks[0], "ok", TaskResult(tasks[0], "agent-1", 0, 1.25, "remote cache", "")),
                tasks[1]: Outcome(tasks[1], "failed", TaskResult(tasks[1], "agent-2", 3, 2.0, None, "boom", "install")),
                tasks[2]: Outcome(tasks[2], "skipped", None, f"needs {tasks[1]}")}
    final = {tasks[0]: "remote cache", tasks[1]: "executed here"}
    text = final_table(graph, outcomes, final)
    assert "agent-1" in text and "1.2s" in text and "ok (remote cache)" in text
    assert "failed in install (exit 3)" in text and f"skipped: needs {tasks[1]}" in text
    assert text.splitlines()[0].split() == ["TASK", "RAN", "ON", "TIME", "RESULT", "FINAL", "PASS"]
    assert summary(final) == "final pass: 1/2 task(s) restored from cache, 1 executed here"


def test_nx_invocations_and_status_lines():
    assert NxInvocation(("build", "test")).argv() == ["run-many", "-t", "build", "test"]
    assert NxInvocation(("build",), ("a", "b")).argv() == ["run-many", "-t", "build", "--projects=a,b"]
    assert NxInvocation(("build",), affected=True, base="main", head="HEAD", extra=("--configuration=prod",)).argv() \
        == ["affected", "-t", "build", "--base=main", "--head=HEAD", "--configuration=prod"]
    assert classify("  [remote cache]") == "remote cache" and classify("") == "executed here"
    assert classify("  [existing outputs match the cache, left as is]") == "outputs already here"
    output = "\n> nx run lib-a:build  [remote cache]\n\n> nx run app:build\n"
    assert restored_from("lib-a:build", output) == "remote cache"
    assert restored_from("app:build", output) is None


def test_agent_tasks_never_skip_the_cache_nor_see_the_cluster_key():
    env = nx_env({"NX_SKIP_NX_CACHE": "true", "NXFARM_TLS_KEY": "base64:xx", "PATH": "/bin"})
    assert "NX_SKIP_NX_CACHE" not in env and "NXFARM_TLS_KEY" not in env
    assert env["NX_DAEMON"] == "false" and env["PATH"] == "/bin"


def test_install_follows_the_lockfile(tmp_path):
    assert install_command(tmp_path, tmp_path / "store") is None and lockfile_digest(tmp_path) is None
    (tmp_path / "package-lock.json").write_text("{}")
    assert install_command(tmp_path, tmp_path / "store").args[:2] == ("npm", "ci")
    first = lockfile_digest(tmp_path)
    (tmp_path / "pnpm-lock.yaml").write_text("lockfileVersion: '9.0'\n")
    command = install_command(tmp_path, tmp_path / "store")
    assert command.manager == "pnpm" and "--frozen-lockfile" in command.args
    assert command.args[-2:] == ("--store-dir", str(tmp_path / "store"))
    assert lockfile_digest(tmp_path) != first


def test_tls_material_from_paths_or_base64_pem(tmp_path):
    files = write_cluster(tmp_path, {"agent-1": ("agent", ("127.0.0.1",))})["agent-1"]
    assert (Path(files.key).stat().st_mode & 0o777) == 0o600
    assert not list(tmp_path.glob("ca.key")), "the CA key is not kept"
    pem = Path(files.key).read_text()
    env = {"NXFARM_TLS_CA": files.ca, "NXFARM_TLS_CERT": files.cert,
           "NXFARM_TLS_KEY": "base64:" + base64.b64encode(pem.encode()).decode()}
    resolved = security.resolve(environ=env)
    assert resolved.key == pem and resolved.ca == files.ca
    with pytest.raises(security.TlsConfigError, match="missing --tls-cert or NXFARM_TLS_CERT"):
        security.resolve(environ={"NXFARM_TLS_CA": files.ca, "NXFARM_TLS_KEY": files.key})
    with pytest.raises(security.TlsConfigError, match="NXFARM_TLS_CA / --tls-ca: no such file"):
        security.resolve(environ={**env, "NXFARM_TLS_CA": str(tmp_path / "nope")})
    with pytest.raises(security.TlsConfigError, match="NXFARM_TLS_KEY: 'base64:' value is not base64"):
        security.resolve(environ={**env, "NXFARM_TLS_KEY": "base64:***"})
    error = str(pytest.raises(security.TlsConfigError, security.resolve,
                              environ={**env, "NXFARM_TLS_KEY": "base64:" + base64.b64encode(b"secret").decode()}).value)
    assert "secret" not in error


def test_certificates_chain_to_their_ca_only():
    from cryptography import x509

    ca, other = new_ca(), new_ca()
    member = x509.load_pem_x509_certificate(issue(ca, "agent-1", "agent", ("100.64.0.11",)).cert_pem.encode())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    other_cert = x509.load_pem_x509_certificate(other.cert_pem.encode())
    member.verify_directly_issued_by(ca_cert)
    with pytest.raises(Exception):
        member.verify_directly_issued_by(other_cert)


def test_agent_and_scheduler_refuse_all_interfaces_and_plain_tcp(tmp_path):
    from nxfarm.cli import main

    assert main(["agent", "run", "--bind", "0.0.0.0", "--workspace", str(tmp_path), "--scheduler", "tls://x:1"]) == 2
    assert main(["agent", "run", "--bind", "127.0.0.1", "--workspace", str(tmp_path), "--scheduler", "tcp://x:1"]) == 2
    assert main(["scheduler", "run", "--bind", "0.0.0.0"]) == 2


def test_closing_a_client_whose_scheduler_died_never_stops_the_build(capsys):
    """distributed raised this from Client.close once in CI, after the scheduler was killed
    mid-build (test_distributed_build.py): the build must go on to its local pass."""
    from nxfarm.build.command import close_client

    class ClientOfADeadScheduler:
        def close(self, timeout: float) -> None:
            raise ValueError("IOStream is not idle; cannot convert to SSL")

    close_client(ClientOfADeadScheduler())
    assert "closing the farm connection: ValueError" in capsys.readouterr().out


def test_task_messages_travel_as_json_and_refuse_what_the_farm_never_sends():
    from nxfarm.farm.protocol import ProtocolError, TaskRequest, TaskResult

    request = TaskRequest("app:build", "https://git.example/r.git", "a" * 40, "apps", ("--configuration=ci",))
    assert TaskRequest.from_json(request.to_json()) == request
    result = TaskResult("app:build", "agent-1", 0, 1.5, "remote cache", "ok")
    assert TaskResult.from_json(result.to_json()) == result
    bad = {
        '{"task_id": "a", "repo_url": "u", "commit": "--upload-pack=x", "workspace_dir": ""}': "not a full hex commit",
        '{"task_id": "a", "repo_url": "u", "commit": "' + "a" * 40 + '", "workspace_dir": "", "x": 1}': "unknown field",
        '{"task_id": 1, "repo_url": "u", "commit": "' + "a" * 40 + '", "workspace_dir": ""}': "task_id",
        "[1]": "not a JSON object",
        "\x80": "not JSON",
    }
    for text, message in bad.items():
        with pytest.raises(ProtocolError, match=message):
            TaskRequest.from_json(text)
    with pytest.raises(ProtocolError, match="exit_code"):
        TaskResult.from_json('{"task_id": "a", "agent": "b", "exit_code": "0", "seconds": 1, "cache": null, '
                             '"log_tail": ""}')


def test_the_farm_unpickles_only_what_it_sends(tmp_path):
    import os
    import pickle

    from nxfarm.agent.task import run_task
    from nxfarm.farm.unpickle import RefusedPickle, restricted_loads

    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    assert restricted_loads(pickle.dumps(run_task)) is run_task
    assert restricted_loads(pickle.dumps({"a": [1, 2.5, (b"x", None)]})) == {"a": [1, 2.5, (b"x", None)]}
    import io

    plain = io.BytesIO()
    pickler = pickle.Pickler(plain)
    pickler.dispatch_table = {}  # not through tblib's reducer, which Dask installs process-wide once used
    pickler.dump(ValueError("plain"))
    assert isinstance(restricted_loads(plain.getvalue()), ValueError)
    for payload in (pickle.dumps(Boom()), pickle.dumps(eval), pickle.dumps(getattr)):
        with pytest.raises(RefusedPickle, match="nx-farm refuses to unpickle"):
            restricted_loads(payload)
    assert not marker.exists()


def test_build_users_run_commands_without_capabilities():
    from nxfarm.agent.sandbox import BuildUser, SandboxError, as_user, build_user_name, lookup

    assert build_user_name(3) == "nxbuild3"
    assert as_user(["nx", "run", "a:b"], None) == ["nx", "run", "a:b"]
    wrapped = as_user(["nx", "run", "a:b"], BuildUser("nxbuild0", 990, 990))
    assert wrapped[:1] == ["setpriv"] and wrapped[-4:] == ["--", "nx", "run", "a:b"]
    for flag in ("--reuid=990", "--regid=990", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all",
                 "--no-new-privs"):
        assert flag in wrapped
    with pytest.raises(SandboxError, match="build user 'nxbuild-missing' does not exist"):
        lookup(["nxbuild-missing"])
    with pytest.raises(SandboxError, match="is root"):
        lookup(["root"])


def test_the_status_line_counts_only_what_an_agent_has_slots_for_as_running():
    from nxfarm.build.dispatch import Outcome, status_line

    outcomes = {f"p{n}:build": Outcome(f"p{n}:build", "running") for n in range(5)}
    outcomes["q:build"] = Outcome("q:build", "queued")
    # Dask gave the 2-slot agent 4 tasks: 2 run, 2 wait there (the issue saw "running 5 (myagent: 4)")
    line = status_line(outcomes, {("myagent", 2): 4, ("other", 3): 1})
    assert line.startswith("queued 3 | running 3 (myagent: 2/2, other: 1/3 slots) | done 0"), line


def test_the_cache_row_of_nxfarm_status():
    from nxfarm.status import agent_parts, cache_part, cache_root, task_of

    assert cache_root("http://10.0.0.1:3333/ns/local") == "http://10.0.0.1:3333"
    assert cache_root("http://10.0.0.1:3333/prefix/ns/pr-1/") == "http://10.0.0.1:3333/prefix"
    metrics = "# TYPE nxcache_hits_total counter\nnxcache_hits_total 3.0\nnxcache_misses_total 1.0\n"
    part = cache_part("http://c", {"entries": 7, "bytes": 3 * 1024 * 1024, "problems": []}, metrics)
    assert part.detail == "7 entries, 3.00 MiB, hit rate 75% (3/4 since start)"
    assert task_of("nxfarm-1a2b3c4d-lib-a:build") == "lib-a:build"
    workers = {"tls://a:1": {"name": "agent-1", "nthreads": 2, "last_seen": 100.0}}
    rows = agent_parts(workers, {"tls://a:1": ["nxfarm-x-a:build", "nxfarm-x-b:build", "nxfarm-x-c:build"]}, 101.5,
                       ["agent-1", "agent-2"])
    assert rows[0].detail == "2/2 slots busy: a:build, b:build, 1 waiting; seen 1.5s ago"
    assert (rows[1].name, rows[1].up) == ("agent-2", False)
