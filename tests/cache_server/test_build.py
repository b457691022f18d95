"""The build under test is the one asked for; the compiled build is tested, the pure one ships.

`make test` runs every test against the compiled modules (PYTHONPATH, NXCACHE_EXPECT=compiled),
then the cache server's tests again against the pure-Python ones (NXCACHE_EXPECT=pure). Without
these checks a failed or stale compile would leave the pure modules under test unnoticed.
"""

import abc
import ast
import enum
import importlib
import importlib.machinery
import os
import subprocess
import sys
import typing
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compiled_modules() -> list[str]:
    """The modules setup.py compiles, as import names (read from setup.py, not repeated here)."""
    tree = ast.parse((ROOT / "cache_server" / "setup.py").read_text())
    listed = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED")
    return ["cache_server." + name.removesuffix(".py").replace("/", ".") for name in listed]


def is_extension(module: str) -> bool:
    origin = importlib.import_module(module).__file__ or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_the_modules_under_test_are_the_build_asked_for():
    expected = os.environ.get("NXCACHE_EXPECT")
    if expected not in ("compiled", "pure"):
        pytest.skip("NXCACHE_EXPECT is not set: `make test` sets it")
    modules = compiled_modules()
    assert len(modules) >= 10
    wrong = [m for m in modules if is_extension(m) != (expected == "compiled")]
    assert not wrong, f"expected the {expected} build, but these are not: {wrong}"


def test_the_compiled_wheel_carries_each_compiled_module_and_its_source():
    """`make test` runs the compiled build (build/compiled); `make wheels` ships the pure one."""
    wheels = list((ROOT / "build" / "compiled" / "wheel").glob("nxfarm_cache_server-*.whl"))
    if not wheels:
        pytest.skip("no compiled build here: `make test` builds it")
    assert "-cp3" in wheels[0].name, f"{wheels[0].name} is not a compiled wheel"
    with zipfile.ZipFile(wheels[0]) as archive:
        names = set(archive.namelist())
    for module in compiled_modules():
        stem = module.replace(".", "/")
        assert f"{stem}.py" in names  # for tracebacks, and the same code as the pure build
        assert any(n.startswith(stem + ".cpython-") and n.endswith(".so") for n in names), stem


def test_every_shipped_set_carries_the_pure_wheel(built_wheels):
    """Hosts mix Pythons and CPUs: the wheel `pulumi up` ships must fit them all."""
    for platform in (built_wheels / "cache").iterdir():
        wheel = next(platform.glob("nxfarm_cache_server-*.whl"))
        assert wheel.name.endswith("-py3-none-any.whl"), wheel


def test_the_pure_build_needs_no_compiler(tmp_path):
    """The default build (what `pip install -r requirements.txt` and `make wheels` make): a wheel for
    any platform, with no extension in it, built in isolation with no compiler and no mypy."""
    env = {k: v for k, v in os.environ.items() if k != "NXCACHE_COMPILE"}
    env["CC"] = "/bin/false"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "-w", str(tmp_path), str(ROOT / "cache_server")],
                   check=True, capture_output=True, env=env, timeout=300)
    wheel = next(tmp_path.glob("nxfarm_cache_server-*.whl"))
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".so")]


def compiled_sources() -> list[Path]:
    return [ROOT / "cache_server" / "src" / (m.replace(".", "/") + ".py") for m in compiled_modules()]


def test_no_compiled_slice_bound_has_a_side_effect():
    """mypyc 2.4.1 evaluates a slice's bounds twice on a memoryview (setup.py): a bound that
    calls anything but len() would do its work twice."""
    found = []
    for path in compiled_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Slice):
                continue
            for bound in (node.lower, node.upper, node.step):
                for inner in ast.walk(bound) if bound is not None else ():
                    if isinstance(inner, (ast.NamedExpr, ast.Await, ast.Yield)) or (
                            isinstance(inner, ast.Call) and ast.unparse(inner.func) != "len"):
                        found.append(f"{path.name}:{node.lineno}: {ast.unparse(bound)}")
    assert not found, found


def test_no_compiled_class_derives_from_a_python_class_with_a_metaclass():
    """A compiled class derived from prometheus_client's Collector (an ABC defined in Python)
    crashed the compiled server in the garbage collector at exit (setup.py). The bases mypyc
    knows (abc.ABC, Enum, Generic, Protocol) and plain Python classes are fine. Checked on
    the classes themselves, whichever build is imported."""
    modules = compiled_modules()
    known = (abc.ABC, enum.Enum, typing.Generic, typing.Protocol, object)
    found = []
    for module in modules:
        for name, value in vars(importlib.import_module(module)).items():
            if not isinstance(value, type) or value.__module__ != module:
                continue
            for base in value.__mro__[1:]:
                if base.__module__ not in modules and base not in known and type(base) is not type:
                    found.append(f"{module}.{name}: {base.__module__}.{base.__qualname__}")
    assert not found, found
