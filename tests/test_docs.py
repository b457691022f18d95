"""Every shell block in the README and docs is either checked by a named test or marked as
needing what CI has not (a real tailnet, the Pulumi CLI, machines); and every `nxfarm`,
`just` and `make` command in them names a real subcommand, recipe, target and flags."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NXFARM = str(Path(sys.executable).with_name("nxfarm"))
BLOCK = re.compile(r"(?:^(<!--[^\n]*-->)\n)?^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks():
    for page in PAGES:
        for match in BLOCK.finditer(page.read_text()):
            yield page, match.group(1), match.group(2)


def commands(body: str):
    for line in body.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            yield line


def test_every_block_is_marked_and_checked_ones_name_existing_tests():
    seen = 0
    for page, marker, _ in blocks():
        seen += 1
        where = f"{page.relative_to(ROOT)}"
        assert marker and re.match(r"<!-- (checked|needs): ", marker), f"{where}: unmarked ```sh block"
        for path in re.findall(r"(tests/[\w/]+\.py|\.ci/run)", marker):
            assert (ROOT / path).exists(), f"{where}: {path} does not exist"
        if marker.startswith("<!-- checked"):
            assert re.search(r"tests/|\.ci/run", marker), f"{where}: a checked block names its test"
    assert seen >= 15


def test_nxfarm_just_and_make_commands_exist_with_their_flags():
    helps: dict[tuple[str, ...], str] = {}
    recipes = set(subprocess.run([str(Path(sys.executable).with_name("just")), "--justfile", str(ROOT / "justfile"),
                                  "--summary"], capture_output=True, text=True).stdout.split())
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    checked = 0
    for page, _, body in blocks():
        for line in commands(body):
            words = shlex.split(line.replace("$(", "(").replace('"$', '"'), comments=False, posix=True) \
                if "'" not in line else line.split()
            words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]  # leading VAR=value
            if not words:
                continue
            tool = Path(words[0]).name
            if tool == "nxfarm":
                assert words[0] == "nxfarm", f"{page.name}: `{line}`: write nxfarm as installed (make install)"
                sub = tuple(w for w in words[1:3] if not w.startswith("-") and w in
                            ("build", "agent", "run", "scheduler", "health", "restart", "discover", "doctor", "init",
                             "demo", "farm", "up", "down", "env", "status"))
                assert sub, f"{page.name}: `{line}` names no nxfarm subcommand"
                if sub not in helps:
                    result = subprocess.run([NXFARM, *sub, "--help"], capture_output=True, text=True)
                    assert result.returncode == 0, f"{page.name}: `nxfarm {' '.join(sub)}` does not exist"
                    helps[sub] = result.stdout
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])\b", " ".join(words[1:])):
                    assert flag in helps[sub], f"{page.name}: `nxfarm {' '.join(sub)}` has no {flag}"
                checked += 1
            elif tool == "just":
                assert words[1] in recipes, f"{page.name}: no just recipe {words[1]}"
                checked += 1
            elif tool == "make":
                assert words[1] in targets, f"{page.name}: no make target {words[1]}"
                checked += 1
    assert checked >= 20


def test_every_threat_in_the_security_model_names_tests_that_exist():
    text = (ROOT / "docs" / "security.md").read_text()
    table = text.split("## Threats", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| threat")
            and not line.startswith("|---")]
    assert len(rows) >= 10
    for row in rows:
        proof = row.rstrip(" |").rsplit(" | ", 1)[1]
        paths = re.findall(r"tests/[\w/]+\.py", proof)
        assert paths, f"no test named for: {row[:80]}"
        for path in paths:
            assert (ROOT / path).is_file(), path
        for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", proof):
            assert f"def {name}(" in (ROOT / path).read_text(), f"{path}::{name}"
        for name in re.findall(r"`(test_\w+|probe_\w+)`", proof):
            assert any(f"def {name}(" in (ROOT / path).read_text() for path in paths), name
