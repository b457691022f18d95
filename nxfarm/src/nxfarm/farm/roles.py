"""Who may say what on the farm's Dask cluster, decided by the peer's certificate.

Every farm certificate names its member in the subject's CN and its role in the subject's OU:
`scheduler`, `agent` or `orchestrator`. Dask itself checks only that the peer's certificate
chains to the farm CA (`distributed/comm/tcp.py`, `TLS._read_extra` keeps `getpeercert()` in
`comm.extra_info`); any such peer may call any handler. Here each server checks the role of
every incoming connection and every operation on it:

- the scheduler takes workers only from `agent` certificates and clients only from
  `orchestrator` certificates, and each role gets the handful of operations its side of Dask
  uses (recorded from real builds) and nothing else;
- an agent's own listener takes connections only from the `scheduler` certificate;
- the handlers that run code a peer sent (`run`, `run_function`, `broadcast`, plugin
  registration, ...) are also put in Dask's own `blocked_handlers` (`distributed/core.py`,
  `Server._handle_comm`), so they stay refused for every role even if a list above grew.

Operations are checked where Dask reads them: the connection's `read` is wrapped before
`Server.handle_comm` starts its loop, so a refused RPC answers the caller with a
PermissionError naming the operation, and a refused message on an established stream (the
scheduler's stream handlers are one dict for clients and workers together) closes the stream.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass, field
from typing import Any

ROLES = ("scheduler", "agent", "orchestrator")
REFUSED_OP = "nxfarm-refused"
REPORT_RUN_OP = "nxfarm_report_run"  # an orchestrator's build report (scheduler.py, runs/)
HISTORY_OP = "nxfarm_history"  # what the run store knows of a build's tasks, for scheduling

log = logging.getLogger("nxfarm.roles")

# Handlers that make the receiving process run code or load objects its peer sent, or write
# files it names. Refused for every role, on top of the allowlists.
REMOTE_CODE = {
    "scheduler": ("run_function", "broadcast", "proxy", "register_scheduler_plugin", "unregister_scheduler_plugin",
                  "register_worker_plugin", "unregister_worker_plugin", "register_nanny_plugin",
                  "unregister_nanny_plugin", "register_nanny", "dump_cluster_state_to_url", "scatter", "update_data",
                  "feed", "restart", "restart_workers", "retire_workers", "terminate"),
    "worker": ("run", "run_coroutine", "plugin-add", "plugin-remove", "actor_execute", "actor_attribute",
               "upload_file", "update_data", "gather", "benchmark_disk", "benchmark_memory", "benchmark_network"),
}


@dataclass(frozen=True)
class RolePolicy:
    """What one role may send to one kind of server: RPC operations, the operations that turn the
    connection into a stream, and the operations allowed on that stream."""

    rpc: frozenset[str]
    stream_entry: frozenset[str] = frozenset()
    stream: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ServerPolicy:
    kind: str  # "scheduler" or "worker"
    roles: dict[str, RolePolicy] = field(default_factory=dict)


# The scheduler's stream handlers for workers and for clients (`Scheduler.__init__`,
# worker_handlers and client_handlers), minus pushing data into the cluster.
# "steal-response" is the stealing extension's (distributed/stealing.py): a worker's answer when
# the scheduler moves a queued task elsewhere. Refusing it closed the agent's stream, and the
# agent exited, as soon as tasks waited on one agent (history placement) and another was idle.
_WORKER_STREAM = frozenset({"task-finished", "task-erred", "release-worker-data", "add-keys", "long-running",
                            "reschedule", "keep-alive", "log-event", "worker-status-change",
                            "request-refresh-who-has", "steal-response"})
_CLIENT_STREAM = frozenset({"update-graph", "client-desires-keys", "report-key", "client-releases-keys",
                            "heartbeat-client", "close-client", "subscribe-topic", "unsubscribe-topic",
                            "cancel-keys"})

SCHEDULER_POLICY = ServerPolicy("scheduler", {
    "agent": RolePolicy(rpc=frozenset({"register-worker", "heartbeat_worker", "unregister", "identity"}),
                        stream_entry=frozenset({"register-worker"}), stream=_WORKER_STREAM),
    "orchestrator": RolePolicy(rpc=frozenset({"register-client", "identity", "ncores", "ncores_running", "processing",
                                              "who_has", "has_what", "gather", "versions", "get_task_status",
                                              REPORT_RUN_OP, HISTORY_OP}),
                               stream_entry=frozenset({"register-client"}), stream=_CLIENT_STREAM),
})
# The scheduler fetches results from an agent (`get_data`) and manages its keys; no one else
# has any business on an agent's listener (tasks never fetch each other's data).
WORKER_POLICY = ServerPolicy("worker", {
    "scheduler": RolePolicy(rpc=frozenset({"get_data", "free_keys", "ping", "identity", "keys", "versions"})),
})


def subject(peercert: dict | None) -> dict[str, str]:
    """The subject of a certificate as `ssl.SSLSocket.getpeercert()` gives it, flattened."""
    names: dict[str, str] = {}
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            names[key] = value
    return names


def peer_identity(peercert: dict | None) -> tuple[str | None, str]:
    """(role, member) of a peer certificate; role is None unless the OU names a farm role."""
    names = subject(peercert)
    role = names.get("organizationalUnitName")
    return (role if role in ROLES else None), names.get("commonName", "?")


def refusal(op: str, role: str, member: str) -> str:
    return f"nx-farm: the {role} certificate of {member!r} may not call {op!r} on this server"


def _plain_pickle(error: BaseException) -> bytes:
    """The error pickled as itself, not through the tblib reducer Dask registers in copyreg."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out)
    pickler.dispatch_table = {}  # type: ignore[misc]
    pickler.dump(error)
    return out.getvalue()


class _Guarded:
    """Checks one connection's messages against its peer's role as Dask reads them."""

    def __init__(self, comm: Any, policy: RolePolicy, role: str, member: str) -> None:
        self.policy, self.role, self.member = policy, role, member
        self.streaming = False
        self._read = comm.read
        self._comm = comm

    async def read(self, deserializers: Any = None) -> Any:
        msg = await self._read(deserializers)
        if self.streaming or isinstance(msg, (list, tuple)):
            return self._stream(msg)
        if not isinstance(msg, dict):
            return msg  # Dask's own loop refuses a message that is not a dict
        op = msg.get("op")
        if op in self.policy.rpc:
            if op in self.policy.stream_entry:
                self.streaming = True
            return msg
        log.warning("%s", refusal(str(op), self.role, self.member))
        return {"op": REFUSED_OP, "refused": str(op), "reply": msg.get("reply", True)}

    def _stream(self, msgs: Any) -> Any:
        from distributed.comm.core import CommClosedError

        for msg in msgs if isinstance(msgs, (list, tuple)) else (msgs,):
            op = msg.get("op") if isinstance(msg, dict) else None
            if op is not None and op != "close-stream" and op not in self.policy.stream:
                log.warning("%s; closing its stream", refusal(str(op), self.role, self.member))
                self._comm.abort()
                raise CommClosedError(refusal(str(op), self.role, self.member))
        return msgs


def guard(server: Any, policy: ServerPolicy) -> None:
    """Make `server` (a distributed Scheduler or Worker, not yet started) check every incoming
    connection against `policy`. Call before awaiting the server: its listener binds
    `handle_comm` when it starts."""
    inner = server.handle_comm
    for op in REMOTE_CODE[policy.kind]:
        if op not in server.blocked_handlers:
            server.blocked_handlers.append(op)

    def refused(comm: Any = None, refused: str = "?") -> dict:
        # Answered as Dask answers an error, but with a plain PermissionError and no traceback:
        # a farm client unpickles only builtins (farm/unpickle.py), not tblib's frames.
        from distributed.protocol import to_serialize

        role, member = peer_identity(comm.extra_info.get("peercert") if comm is not None else None)
        error = PermissionError(refusal(refused, role or "unknown", member))
        return {"status": "uncaught-error", "exception": to_serialize(_plain_pickle(error)), "traceback": None,
                "exception_text": repr(error), "traceback_text": ""}

    server.handlers[REFUSED_OP] = refused
    if policy.kind == "worker":
        # The scheduler hands every registering worker its plugins, pickled (the worker loads
        # them in `_register_with_scheduler`, not through a handler); the farm's agents load none.
        async def plugin_add(plugin: Any = None, name: str | None = None, catch_errors: bool = True) -> dict:
            log.info("not loading worker plugin %s sent by the scheduler: agents load no plugins", name)
            return {"status": "OK"}

        server.plugin_add = plugin_add

    def handle_comm(comm: Any) -> Any:
        peercert = comm.extra_info.get("peercert")
        role, member = peer_identity(peercert)
        role_policy = policy.roles.get(role) if role else None
        if role is None or role_policy is None:
            log.warning("refused a connection from %s: certificate of %r has role %r, not one of %s",
                        comm.peer_address, member, subject(peercert).get("organizationalUnitName"),
                        sorted(policy.roles))
            comm.abort()
            from distributed.utils import NoOpAwaitable

            return NoOpAwaitable()
        comm.read = _Guarded(comm, role_policy, role, member).read  # type: ignore[assignment]
        return inner(comm)

    server.handle_comm = handle_comm
