"""Builds the request path as C extensions with mypyc when NXCACHE_COMPILE=1; pure Python otherwise.

Why: on a small artifact the server's cost is the Python it runs per request (~1,000
bytecodes for a GET), not storage or syscalls. The same modules compiled answer a 4 KiB
GET or miss in 22-31% less CPU (bench/README.md, "Compiled"). The .py files ship beside the
extensions, and every module runs unchanged as Python. The default build is pure: a
compiled wheel fits one Python and one CPU while homelab hosts mix them, and `pip install -r
requirements.txt` (`pulumi install`) must not need a C compiler. `make test` and `make bench`
build the compiled one (NXCACHE_COMPILE=1, without build isolation: mypy comes from
requirements-dev.txt), and the editable install used for development is pure, so an edited
module never hides behind a stale extension.

Compiled code must keep to what mypyc translates faithfully (tests/cache_server/test_build.py
checks the first two):
- no call in a slice's bounds: on a memoryview (any type but list, tuple, str and bytes) mypyc
  2.4.1 evaluates the bounds twice, so `view[os.write(fd, view):]` wrote every byte twice;
- no compiled class derived from a Python class with a metaclass (prometheus_client's
  Collector, an ABC): the process crashed in the garbage collector at exit;
- an attribute is never named `_thread` (its C name, `__thread`, is a keyword to gcc).
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules on the path of every request; the rest (flags, start-up, workers, peers, the
# sendfile coroutine) runs once or rarely and stays Python.
COMPILED = [
    "accesslog.py",
    "auth.py",
    "chunks.py",
    "metrics.py",
    "namespaces.py",
    "http/handler.py",
    "http/protocol.py",
    "storage/base.py",
    "storage/disk.py",
    "storage/entry_format.py",
    "storage/errors.py",
    "storage/hot.py",
    "storage/lru.py",
    "storage/syncer.py",
]


def extensions() -> list:
    if os.environ.get("NXCACHE_COMPILE") != "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit("NXCACHE_COMPILE=1 needs mypy (mypyc) installed: pip install -r requirements-dev.txt, "
                         "then build with --no-build-isolation") from None

    here = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.join("src", "cache_server", name) for name in COMPILED]
    cwd = os.getcwd()
    os.chdir(here)  # mypyc names modules by their paths below the build's directory
    try:
        return mypycify(["--config-file", os.path.join(here, "mypyc.ini"), *paths],
                        opt_level="3", group_name="cache_server")
    finally:
        os.chdir(cwd)


setup(ext_modules=extensions())
