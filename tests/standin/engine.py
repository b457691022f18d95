"""A stand-in for the Pulumi engine's `pulumi up`, for the resources one program run registered.

What the real engine does and this does too (pulumi/pkg/resource/deploy: step_generator.go,
step_executor.go):
  * every resource is diffed against the state: no change -> no step; a change the provider
    says needs replacement (a `replaceOnChanges` input such as pulumi-command's `triggers`, a
    `replace_on_changes` option, a changed `replacement_trigger`) -> replace; otherwise update.
    `ignore_changes` keeps the old value of those inputs.
  * steps run in parallel: a step starts once every resource it depends on is done, and only
    those: explicit `depends_on` and dependencies carried by Outputs, as the SDK sends them in
    RegisterResource (a component parent orders nothing among its children). Ready steps are
    shuffled by a seed and each starts after a random pause, so runs with different seeds
    interleave differently.
  * a replacement creates the new resource first and deletes the old one with the other
    deletes, unless `delete_before_replace`.
  * deletes (resources gone from the program, replaced halves) run after every create and
    update, each after everything that depended on it is deleted; a delete runs the *old*
    state's inputs (its command, its connection). `retain_on_delete` skips the provider.
  * a failed step stops new steps; those running finish; the update fails and the state keeps
    what succeeded.
  * `pulumi import` records a resource with the provider's view of it (`import_resource`).
Not modelled: preview (nothing runs; unknowns), the dependents of a `delete_before_replace`
replacement being replaced too, `protect`, `deleted_with`, partial state of a failed create
(the real engine records it with an init error and updates it next time; here the next up
creates it again), refresh, and secret-aware diffs (values are compared unwrapped).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.components.pulumi_harness import ProgramRun, Registered, unwrap


@dataclass
class Live:
    """One resource in the stack's state."""

    typ: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    depends_on: frozenset[str] = frozenset()
    retain_on_delete: bool = False
    replacement_trigger: Any = None


class Provider(Protocol):
    def replaces(self, typ: str, old: dict[str, Any], new: dict[str, Any]) -> bool: ...
    def create(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]: ...
    def update(self, old: Live, inputs: dict[str, Any]) -> dict[str, Any]: ...
    def delete(self, old: Live) -> None: ...


class StepFailed(Exception):
    def __init__(self, failures: dict[str, BaseException], steps: list[tuple[str, str]]) -> None:
        self.failures, self.steps = failures, steps
        lines = [f"{name}: {type(exc).__name__}: {exc}" for name, exc in failures.items()]
        super().__init__("pulumi up failed:\n" + "\n".join(lines))


def archive_digest(path: str) -> str:
    """What the engine records for a FileArchive: a hash of every file's path and content."""
    digest = hashlib.sha256()
    root = Path(path)
    for item in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(root)).encode() + b"\0" + hashlib.sha256(item.read_bytes()).digest())
    return digest.hexdigest()


def _with_archive_digests(value: Any) -> Any:
    if isinstance(value, tuple) and value[:1] == ("FileArchive",):
        return ("FileArchive", value[1], archive_digest(value[1]))
    if isinstance(value, dict):
        return {k: _with_archive_digests(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_archive_digests(v) for v in value]
    return value


class Engine:
    def __init__(self, providers: dict[str, Provider], *, seed: int, jitter: float = 0.05, parallel: int = 16) -> None:
        """`providers`: type-token prefix (`command:remote:`, `tailscale:`...) -> provider."""
        self.providers = providers
        self.rng = random.Random(seed)
        self.jitter = jitter
        self.parallel = parallel
        self.state: dict[str, Live] = {}
        self.lock = threading.Lock()

    def provider(self, typ: str) -> Provider:
        for prefix, provider in self.providers.items():
            if typ.startswith(prefix):
                return provider
        raise KeyError(f"no provider for {typ}")

    def import_resource(self, typ: str, name: str, inputs: dict[str, Any]) -> None:
        """`pulumi import`: the resource enters the state as the provider reads it; nothing runs."""
        self.state[name] = Live(typ, name, dict(inputs))

    # -- planning --------------------------------------------------------------------------------
    def _plan(self, declared: list[Registered]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        ops: dict[str, str] = {}
        inputs: dict[str, dict[str, Any]] = {}
        for resource in declared:
            new = _with_archive_digests(unwrap(resource.inputs))
            old = self.state.get(resource.name)
            if old is not None:
                for key in resource.options.get("ignore_changes", []):
                    if key in old.inputs:
                        new[key] = old.inputs[key]
                    else:
                        new.pop(key, None)
            inputs[resource.name] = new
            if old is None:
                ops[resource.name] = "create"
            elif old.typ != resource.typ:
                ops[resource.name] = "replace"
            elif self.provider(resource.typ).replaces(resource.typ, old.inputs, new) or any(
                    old.inputs.get(key) != new.get(key) for key in resource.options.get("replace_on_changes", [])) \
                    or old.replacement_trigger != resource.options.get("replacement_trigger"):
                ops[resource.name] = "replace"
            elif old.inputs != new:
                ops[resource.name] = "update"
            else:
                ops[resource.name] = "same"
        return ops, inputs

    def plan(self, run: ProgramRun) -> dict[str, str]:
        """What `pulumi preview` would say of each resource: create, update, replace or same."""
        return self._plan([r for r in run.resources if r.custom])[0]

    # -- running ---------------------------------------------------------------------------------
    def up(self, run: ProgramRun) -> list[tuple[str, str]]:
        """Apply one program run; returns the (resource, operation) steps that ran, in the order they ended."""
        declared = [r for r in run.resources if r.custom]
        by_name = {r.name: r for r in declared}
        ops, inputs = self._plan(declared)
        done: list[tuple[str, str]] = []
        failures: dict[str, BaseException] = {}
        condemned: list[Live] = []
        deps = {name: {d for d in by_name[name].depends_on if d in by_name and d != name} for name in by_name}

        def step(name: str) -> None:
            resource, op = by_name[name], ops[name]
            provider = self.provider(resource.typ)
            old = self.state.get(name)
            if op == "create":
                outputs = provider.create(resource.typ, name, inputs[name])
            elif op == "update":
                assert old is not None
                outputs = provider.update(old, inputs[name])
            else:  # replace
                assert old is not None
                if resource.options.get("delete_before_replace"):
                    self._delete(old)
                else:
                    with self.lock:
                        condemned.append(old)
                outputs = provider.create(resource.typ, name, inputs[name])
            with self.lock:
                self.state[name] = Live(resource.typ, name, inputs[name], outputs, frozenset(deps[name]),
                                       bool(resource.options.get("retain_on_delete")),
                                       resource.options.get("replacement_trigger"))

        self._run_graph({n: deps[n] for n in by_name}, {n for n in by_name if ops[n] != "same"}, step, done,
                        failures, ops)
        if not failures:
            for name in by_name:  # unchanged resources keep their state, with today's options
                if ops[name] == "same":
                    live = self.state[name]
                    live.depends_on = frozenset(deps[name])
                    live.retain_on_delete = bool(by_name[name].options.get("retain_on_delete"))
            gone = [live for name, live in self.state.items() if name not in by_name]
            self._delete_all(gone + condemned, done, failures)
        if failures:
            raise StepFailed(failures, done)
        return done

    def destroy(self) -> list[tuple[str, str]]:
        done: list[tuple[str, str]] = []
        failures: dict[str, BaseException] = {}
        self._delete_all(list(self.state.values()), done, failures)
        if failures:
            raise StepFailed(failures, done)
        return done

    def _delete(self, old: Live) -> None:
        if not old.retain_on_delete:
            self.provider(old.typ).delete(old)

    def _delete_all(self, doomed: list[Live], done: list[tuple[str, str]], failures: dict[str, BaseException]) -> None:
        """Each after everything among `doomed` that depended on it."""
        by_key = {f"{live.name}#{i}": live for i, live in enumerate(doomed)}  # a replaced name is doomed twice
        dependents = {key: {other_key for other_key, other in by_key.items()
                            if other is not live and live.name in other.depends_on}
                      for key, live in by_key.items()}

        def step(key: str) -> None:
            live = by_key[key]
            self._delete(live)
            with self.lock:
                if self.state.get(live.name) is live:
                    del self.state[live.name]

        self._run_graph(dependents, set(by_key), step, done, failures, {k: "delete" for k in by_key},
                        label=lambda key: by_key[key].name)

    def _run_graph(self, after: dict[str, set[str]], todo: set[str], step, done: list[tuple[str, str]],  # noqa: ANN001
                   failures: dict[str, BaseException], ops: dict[str, str], label=lambda key: key) -> None:  # noqa: ANN001
        """Run `step(key)` for every key in `todo`, each once all keys in `after[key]` are finished."""
        finished = {key for key in after if key not in todo}
        pending = set(todo)
        running: dict[Future[None], str] = {}

        def start(key: str, pause: float) -> None:
            time.sleep(pause)
            step(key)

        with ThreadPoolExecutor(self.parallel) as pool:
            while pending or running:
                if not failures:
                    ready = sorted(k for k in pending if after[k] <= finished)
                    self.rng.shuffle(ready)
                    for key in ready:
                        pending.discard(key)
                        running[pool.submit(start, key, self.rng.uniform(0, self.jitter))] = key
                if not running:
                    if pending and not failures:
                        raise RuntimeError(f"dependency cycle among {sorted(pending)}")
                    break
                complete, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in complete:
                    key = running.pop(future)
                    error = future.exception()
                    if error is not None:
                        failures[label(key)] = error
                    else:
                        finished.add(key)
                        done.append((label(key), ops[key]))
