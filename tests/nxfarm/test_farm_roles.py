"""Roles by certificate on a real farm (nxfarm scheduler and agent processes, mutual TLS on
127.0.0.1): who may be a client, a worker, or talk to an agent, and that no peer makes another
run code it sent. The attacks are real Dask calls with real farm certificates."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from nxfarm.farm import security as tls
from nxfarm.farm.tls import new_ca, write_member

from .farm_procs import LocalFarm, Process, clean_env
from .farm_workspace import PROJECTS, FarmWorkspace

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    state = tmp_path_factory.mktemp("roles")
    ca = new_ca()
    farm = LocalFarm(state / "farm", agents=1, ca=ca)
    farm.ca = ca
    farm.start_cache()
    farm.start_scheduler()
    farm.start_agent("agent-1")
    yield farm
    farm.stop()


def client(farm, member: str):  # noqa: ANN201 - distributed.Client
    from distributed import Client

    return Client(farm.scheduler_address, security=tls.security(farm.certs[member], "client"), timeout=10,
                  set_as_default=False)


def agent_address(farm) -> str:  # noqa: ANN001
    with client(farm, "orchestrator") as c:
        (address,) = c.scheduler_info(n_workers=-1)["workers"]
    return address


async def _direct_rpc(address: str, files, op: str, **msg):  # noqa: ANN001, ANN202
    from distributed.comm import connect

    comm = await connect(address, **tls.security(files, "client").get_connection_args("client"))
    try:
        await comm.write({"op": op, "reply": True, **msg})
        return await comm.read()
    finally:
        comm.abort()


def direct_rpc(address: str, files, op: str, **msg):  # noqa: ANN001, ANN201
    return asyncio.run(_direct_rpc(address, files, op, **msg))


def test_an_agent_certificate_is_refused_as_a_client(farm):
    with pytest.raises((OSError, TimeoutError)):  # the client keeps asking until its timeout
        client(farm, "agent-1")
    scheduler_log = farm.scheduler.log.read_text()
    assert "the agent certificate of 'agent-1' may not call 'register-client'" in scheduler_log
    # ...and may say nothing a client says, by RPC either.
    reply = direct_rpc(farm.scheduler_address, farm.certs["agent-1"], "processing")
    assert reply["status"] == "uncaught-error" and "may not call 'processing'" in reply["exception_text"]


def test_an_orchestrator_may_not_make_the_scheduler_or_an_agent_run_its_code(farm, tmp_path):
    from distributed.diagnostics.plugin import NannyPlugin, SchedulerPlugin, WorkerPlugin

    marker = tmp_path / "ran"

    def touch() -> None:
        marker.touch()

    with client(farm, "orchestrator") as c:
        attempts = {
            "run_function": lambda: c.run_on_scheduler(touch),
            "broadcast": lambda: c.run(touch),
            "register_scheduler_plugin": lambda: c.register_plugin(SchedulerPlugin(), name="s"),
            "register_worker_plugin": lambda: c.register_plugin(WorkerPlugin(), name="w"),
            "register_nanny_plugin": lambda: c.register_plugin(NannyPlugin(), name="n"),
        }
        for op, attempt in attempts.items():
            with pytest.raises(PermissionError, match=f"orchestrator certificate of 'orchestrator' may not call '{op}'"):
                attempt()
        assert c.scheduler_info(n_workers=-1)["workers"], "the client still works after its refused calls"
    assert not marker.exists()


def test_only_the_scheduler_may_talk_to_an_agent_directly(farm, tmp_path):
    from distributed.comm.core import CommClosedError
    from distributed.protocol.pickle import dumps

    address = agent_address(farm)
    marker = tmp_path / "ran"
    for member in ("orchestrator", "agent-1"):
        with pytest.raises((CommClosedError, OSError)):
            direct_rpc(address, farm.certs[member], "run", function=dumps(marker.touch))
    assert not marker.exists()
    log = farm.agents["agent-1"].log.read_text()
    assert "certificate of 'orchestrator' has role 'orchestrator'" in log
    assert "certificate of 'agent-1' has role 'agent'" in log


@pytest.mark.parametrize("role", [None, "builder"])
def test_a_certificate_without_a_farm_role_is_refused_everywhere(farm, tmp_path, role):
    files = write_member(tmp_path / "tls", farm.ca, f"member-{role}", role)
    with pytest.raises(Exception):
        direct_rpc(farm.scheduler_address, files, "identity")
    with pytest.raises(Exception):
        direct_rpc(agent_address(farm), files, "identity")
    assert f"certificate of 'member-{role}' has role {role!r}" in farm.scheduler.log.read_text()
    # The same request with an orchestrator certificate is answered: the refusal is the role's.
    assert direct_rpc(farm.scheduler_address, farm.certs["orchestrator"], "identity")["type"] == "Scheduler"


def test_a_tampered_agent_cannot_make_the_orchestrator_run_code(tmp_path):
    """An agent whose task answers with a pickle that runs a command, and whose task-finished
    message carries one in its `type` field: the build loses those tasks, runs them here,
    and nothing the agent sent runs."""
    ca = new_ca()
    farm = LocalFarm(tmp_path / "farm", agents=1, ca=ca)
    markers = tmp_path / "markers"
    markers.mkdir()
    try:
        farm.start_cache()
        farm.start_scheduler()
        files = farm.certs["agent-1"]
        farm.agents["tampered"] = Process(
            "tampered", [sys.executable, str(HERE / "tampered_worker.py"), farm.scheduler_address, files.ca,
                         files.cert, files.key, str(markers)],
            clean_env(), tmp_path / "tampered.log", "tampered worker ready")
        workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
        result = farm.build(workspace.root)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sorted(workspace.executed()) == sorted(PROJECTS), "every task is built here instead"
        assert list(markers.iterdir()) == [], "a pickle from the agent ran in the orchestrator"

        # The control: a plain Dask client (no nx-farm unpickling rules) on the same farm does
        # run the agent's pickle, so the assertions above can fail.
        code = ("import sys\nfrom distributed import Client\nfrom distributed.security import Security\n"
                "from nxfarm.agent.task import run_task\n"
                "s = Security(require_encryption=True, tls_ca_file=sys.argv[2], tls_client_cert=sys.argv[3], "
                "tls_client_key=sys.argv[4])\n"
                "c = Client(sys.argv[1], security=s, timeout=10)\n"
                "f = c.submit(run_task, '{}', pure=False)\n"
                "try:\n    f.result(timeout=60)\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
        orchestrator = farm.certs["orchestrator"]
        subprocess.run([sys.executable, "-c", code, farm.scheduler_address, orchestrator.ca, orchestrator.cert,
                        orchestrator.key], env=clean_env(), capture_output=True, text=True, timeout=120)
        assert (markers / "result").exists() or (markers / "type").exists()
    finally:
        farm.stop()
