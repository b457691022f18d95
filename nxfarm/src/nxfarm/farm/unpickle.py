"""In a farm process, unpickle only what the farm itself sends.

Dask unpickles what its peers send in several places, whatever deserializers a client is given:
the scheduler the graph a client submits (`Scheduler.update_graph`), a worker the task it is
told to run (`compute-task`), a client the `type` of a finished task
(`Client._handle_key_in_memory`), exceptions and tracebacks (`distributed/core.py`,
`clean_exception`), and anything marked `ToPickle` (`distributed/protocol/core.py`,
`_decode_default`). Each of these goes through `distributed.protocol.pickle.loads` or a module's own
`pickle.loads`, both looked up by attribute at call time.

`install()` gives those modules a `pickle` whose `loads` is an unpickler whose
`find_class` resolves only the names in ALLOWED: the farm's one task function, Dask's task-spec
classes, and harmless builtins. A pickle naming anything else (`os.system`, `builtins.eval`, a
class whose reduce runs code) fails to load instead of running. Task arguments and results are
JSON strings (`farm/protocol.py`), so no farm object is unpickled at all.
"""

from __future__ import annotations

import builtins
import importlib
import io
import logging
import pickle
import types
from typing import Any

# (module, name) pairs a farm peer legitimately sends: recorded by tracing `find_class` (the
# `nxfarm.unpickle` logger at DEBUG) in the scheduler, an agent and an orchestrator while a
# task was submitted, run and collected with dask/distributed 2026.8.0.
ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("nxfarm.agent.task", "run_task"),   # the task function, by reference
    ("dask._expr", "Expr._reconstruct"),  # the graph a client submits: LLGExpr(dict of Task)
    ("dask._expr", "LLGExpr"),
    ("dask._task_spec", "Task"),
    *(("builtins", name) for name in ("str", "bytes", "int", "float", "bool", "NoneType", "tuple", "list", "dict",
                                      "set", "frozenset")),
})
# Builtin exception classes only construct themselves from their arguments; allowing them lets
# a plain error travel as itself. Dask pickles most errors with tblib, whose traceback
# reconstruction runs `exec` on frames the pickle describes: refused, so such an error arrives
# as `Exception(<its pickled bytes>)` (its text is still readable there).
log = logging.getLogger("nxfarm.unpickle")
_EXCEPTIONS = frozenset(name for name, value in vars(builtins).items()
                        if isinstance(value, type) and issubclass(value, BaseException))


class RefusedPickle(pickle.UnpicklingError):
    """A peer sent a pickle naming something the farm never sends."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        log.debug("unpickle %s.%s", module, name)
        if (module, name) in ALLOWED or (module == "builtins" and name in _EXCEPTIONS):
            return super().find_class(module, name)
        raise RefusedPickle(f"nx-farm refuses to unpickle {module}.{name}: not something the farm sends")


def restricted_loads(data: Any, /, *, fix_imports: bool = True, encoding: str = "ASCII", errors: str = "strict",
                     buffers: Any = ()) -> Any:
    return _Unpickler(io.BytesIO(data), fix_imports=fix_imports, encoding=encoding, errors=errors,
                      buffers=buffers).load()


# The modules of distributed that unpickle a peer's bytes through the standard module
# (distributed/protocol/pickle.py, client.py, scheduler.py); worker.py, nanny.py and core.py
# call distributed.protocol.pickle, which goes through the first.
_PEER_FACING = ("distributed.protocol.pickle", "distributed.client", "distributed.scheduler")


def _restricted_pickle_module() -> types.ModuleType:
    shim = types.ModuleType("pickle", "the standard pickle module, with loads restricted to ALLOWED")
    shim.__dict__.update({k: v for k, v in vars(pickle).items() if not k.startswith("__")})
    shim.loads = restricted_loads  # type: ignore[attr-defined]
    return shim


_SHIM = _restricted_pickle_module()


def install() -> None:
    """From now on, what distributed unpickles in this process may name only ALLOWED
    (idempotent). The process's own pickles (dask's tokenizer round trips) are untouched."""
    for name in _PEER_FACING:
        module = importlib.import_module(name)
        if getattr(module, "pickle", None) is not pickle and getattr(module, "pickle", None) is not _SHIM:
            raise RuntimeError(f"{name}.pickle is not the standard pickle module: distributed changed; "
                               "review farm/unpickle.py")
        module.pickle = _SHIM  # type: ignore[attr-defined]


def installed() -> bool:
    return all(getattr(importlib.import_module(name), "pickle", None) is _SHIM for name in _PEER_FACING)
