"""CPU to store one new small file on a filesystem: a 4 KiB artifact alone, or with our header.

nginx and the Go peer store a 4 KiB artifact's bytes alone: one page. The cache server puts
a 64-byte header in front (storage/entry_format.py), so the same artifact is a 4,160-byte
file: two pages. The bench's 4 KiB PUT cells, whose bodies are exactly one page, thus ask of
us a page the peers never write; this measures what that page costs, so that the header's
share of the 4 KiB PUT gap is a number rather than a guess. (For real artifacts, whose sizes
are arbitrary, the header adds a page only when the size is within 64 bytes below a multiple
of 4 KiB.)

It writes --files new files of each size as a small PUT does (create a temporary file,
write, link it under its final name, unlink the temporary name, close) and prints the CPU
time per file, the two sizes alternating over --reps rounds so a drift of the host hits both.
Each round starts on an empty directory, as each bench cell does.

    python bench/pagecost.py [--dir DIR] [--files 20000] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "cache_server" / "src"))  # PYTHONPATH (a built copy) wins

from cache_server.storage.entry_format import HEADER_SIZE  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
BODY = 4096
SIZES = {"artifact alone (nginx, Go)": BODY, "header + artifact (nxcache)": HEADER_SIZE + BODY}


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path`, from the longest mount point above it."""
    best, kind = "", "?"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, fields[2]
    return kind


def store_files(directory: Path, size: int, count: int) -> float:
    """CPU seconds to store `count` new files of `size` bytes the way a small PUT does."""
    tmp, entries = directory / "tmp", directory / "e"
    tmp.mkdir()
    entries.mkdir()
    data = os.urandom(size)
    started = time.process_time()
    for i in range(count):
        tmp_path = f"{tmp}/{i}.upload"
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.write(fd, data)
        os.link(tmp_path, f"{entries}/{i}")
        os.unlink(tmp_path)
        os.close(fd)
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="where to write (default: a new directory on /dev/shm, a tmpfs)")
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.files < 1 or args.reps < 1:
        print("pagecost: --files and --reps must be at least 1", file=sys.stderr)
        return 2
    parent = args.dir or (Path("/dev/shm") if os.path.isdir("/dev/shm") else None)
    if parent is not None and not parent.is_dir():
        print(f"pagecost: --dir {parent} is not a directory", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="nxcache-pagecost-", dir=parent))
    print(f"pagecost: {args.files:,} new files per size and round on {filesystem_of(scratch)} "
          f"({scratch.parent}), {args.reps} rounds; page {PAGE} bytes")
    per_file: dict[str, list[float]] = {label: [] for label in SIZES}
    try:
        for rep in range(args.reps):
            labels = list(SIZES) if rep % 2 == 0 else list(reversed(SIZES))
            for label in labels:
                round_dir = scratch / f"{rep}-{SIZES[label]}"
                round_dir.mkdir()
                try:
                    per_file[label].append(store_files(round_dir, SIZES[label], args.files) / args.files * 1e6)
                finally:
                    shutil.rmtree(round_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{'file':<28} {'bytes':>6} {'pages':>5}  {'us CPU per file, each round':<30} median")
    medians = {}
    for label, size in SIZES.items():
        medians[label] = statistics.median(per_file[label])
        rounds = " ".join(f"{us:6.1f}" for us in per_file[label])
        print(f"{label:<28} {size:>6} {-(-size // PAGE):>5}  {rounds:<30} {medians[label]:6.1f}")
    alone, ours = medians.values()
    print(f"header + artifact costs {ours - alone:+.1f} us per file ({ours / alone:.2f}x the artifact alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
