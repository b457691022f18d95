"""A real S3 server (Ceph RGW, tests/s3/rgw.sh) for the whole test session, on 127.0.0.1.

The packages are fetched once into build/rgw (about 69 MB) and unpacked there; every session
starts a fresh cluster in a temporary directory (about 8 s) and stops it, by PID, at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from nxfarm.demo.farm import free_port

ROOT = Path(__file__).resolve().parents[2]
ACCESS_KEY, SECRET_KEY = "accessKey1", "verySecretKey1"
BUCKET = "nxcache"


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Rgw:
    def __init__(self, directory: Path, bind: str = "127.0.0.1") -> None:
        self.directory = directory
        self.bind = bind
        self.port = free_port()
        self.mon_port = free_port()

    @property
    def endpoint(self) -> str:
        return f"http://{self.bind}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs besides the endpoint: the credentials, through botocore's chain."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self) -> Rgw:
        env = {**os.environ, "RGW_ROOT": str(ROOT / "build" / "rgw" / "root"), "RGW_DIR": str(self.directory),
               "RGW_PORT": str(self.port), "RGW_MON_PORT": str(self.mon_port), "RGW_BIND": self.bind}
        result = subprocess.run(["bash", str(ROOT / "tests" / "s3" / "rgw.sh")], env=env, capture_output=True,
                                text=True, timeout=600)
        if result.returncode != 0:
            logs = "".join(p.read_text(errors="replace")[-2000:] for p in (self.directory / "log").glob("*.out"))
            raise RuntimeError(f"RGW did not start ({result.returncode}): {result.stderr[-3000:]}\n{logs}")
        self.client().create_bucket(Bucket=BUCKET)
        return self

    def client(self):  # noqa: ANN201 - a botocore S3 client (synchronous, for tests)
        import botocore.session
        from botocore.config import Config

        session = botocore.session.get_session()
        session.set_credentials(ACCESS_KEY, SECRET_KEY)
        return session.create_client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                     config=Config(s3={"addressing_style": "path"}))

    def objects(self, prefix: str) -> dict[str, int]:
        """The cache entries under `prefix` (not the frontends' own `_nxfarm/` objects), with sizes."""
        listing = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return {item["Key"]: item["Size"] for item in listing.get("Contents", [])
                if "/" not in item["Key"][len(prefix):]}

    def _ceph(self, program: str) -> tuple[list[str], dict[str, str]]:
        """A Ceph program of the unpacked packages on this cluster's config, and its environment (as rgw.sh sets it)."""
        root = ROOT / "build" / "rgw" / "root"
        lib = root / "usr" / "lib" / f"{os.uname().machine}-linux-gnu"
        env = {**os.environ, "LD_LIBRARY_PATH": f"{root}/lib/{os.uname().machine}-linux-gnu:{lib}:{lib}/ceph"}
        return [str(root / "usr" / "bin" / program), "-c", str(self.directory / "ceph.conf")], env

    def admin(self, *args: str) -> str:
        """radosgw-admin on this cluster (e.g. `key create` for a second access key)."""
        command, env = self._ceph("radosgw-admin")
        return subprocess.run([*command, *args], env=env, capture_output=True, text=True, check=True, timeout=60).stdout

    def kill_gateway(self) -> None:
        """SIGKILL the gateway (the cluster keeps its objects: they live in the OSD)."""
        pid = self.pid("rgw")
        os.kill(pid, signal.SIGKILL)
        while _running(pid):
            time.sleep(0.02)

    def start_gateway(self) -> None:
        """The gateway again, on the same port, after kill_gateway."""
        command, env = self._ceph("radosgw")
        with open(self.directory / "log" / "rgw.out", "ab") as log:
            proc = subprocess.Popen([*command, "-n", "client.rgw.a", "-f"], env=env, stdout=log, stderr=log,
                                    start_new_session=True)
        (self.directory / "rgw.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((self.bind, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not come back within 30 s") from None
                time.sleep(0.1)

    def keys(self, prefix: str) -> list[str]:
        """Every object key under `prefix`."""
        return [item["Key"] for item in self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]

    def pid(self, daemon: str) -> int:
        return int((self.directory / f"{daemon}.pid").read_text())

    def pause(self) -> None:
        """The gateway stops answering (SIGSTOP): connections hang, as with a stuck store."""
        os.kill(self.pid("rgw"), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid("rgw"), signal.SIGCONT)

    def stop(self) -> None:
        for daemon in ("rgw", "osd", "mon"):
            try:
                pid = self.pid(daemon)
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _running(pid):
                time.sleep(0.05)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
