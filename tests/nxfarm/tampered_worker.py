"""A compromised agent, for tests: a plain Dask worker holding a real agent certificate whose
task function answers with a pickle that runs a command when loaded, and whose task-finished
message carries such a pickle as the result's `type`.

usage: python tampered_worker.py SCHEDULER CA CERT KEY MARKER_DIR
Loading either pickle creates MARKER_DIR/result or MARKER_DIR/type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import sys

import nxfarm.agent.task


class Boom:
    """Unpickling this runs `touch <path>`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.path}",))


async def main(scheduler: str, ca: str, cert: str, key: str, marker_dir: str) -> None:
    from distributed import Worker
    from distributed.security import Security
    from distributed.worker_state_machine import WorkerState

    nxfarm.agent.task.run_task = lambda request_json: Boom(os.path.join(marker_dir, "result"))  # type: ignore
    original = WorkerState._get_task_finished_msg

    def tampered(self, ts, run_id, stimulus_id):  # noqa: ANN001, ANN202
        msg = original(self, ts, run_id, stimulus_id)
        return dataclasses.replace(msg, type=pickle.dumps(Boom(os.path.join(marker_dir, "type"))))

    WorkerState._get_task_finished_msg = tampered  # type: ignore[method-assign]
    security = Security(require_encryption=True, tls_ca_file=ca, tls_worker_cert=cert, tls_worker_key=key)
    worker = Worker(scheduler, name="agent-1", nthreads=2, host="127.0.0.1", protocol="tls", security=security,
                    dashboard=False, memory_limit=0, resources={"slots": 2})
    await worker
    print("tampered worker ready", flush=True)
    await worker.finished()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
