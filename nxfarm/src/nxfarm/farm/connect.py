"""A Dask client to the farm's scheduler, as `nxfarm build` and `nxfarm status` open it."""

from __future__ import annotations

from typing import Any

from . import security as tls
from . import unpickle


class SchedulerUnreachable(Exception):
    """The scheduler did not answer, or refused the TLS handshake: one line, its type first."""


def open_client(address: str, files: Any, timeout: float) -> Any:
    """A connected `distributed.Client` over mutual TLS with the farm's certificates (`files`, as
    `security.resolve` found them); SchedulerUnreachable otherwise."""
    from distributed import Client

    unpickle.install()  # the scheduler and agents send nothing the farm needs to unpickle
    try:
        return Client(address, security=tls.security(files, "client"), timeout=timeout, set_as_default=False)
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, TLS errors: all mean "not usable"
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise SchedulerUnreachable(f"{type(exc).__name__}: {first_line[:200]}") from None
