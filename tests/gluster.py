"""A Gluster server on loopback for the tests: glusterd with a working directory
of the test session's own, and single-brick volumes made and deleted per test
(`gluster volume create ... force`), served on loopback.

Everything started here is ended here, by PID or through glusterd: volumes are
stopped (which ends their brick processes) and deleted, the test's own client
mounts are unmounted, and glusterd is terminated."""

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from xml.etree import ElementTree

from conftest import wait_for

GLUSTERD_PORT = 24007
START_TIMEOUT_S = 30
CLI_TIMEOUT_S = 120


class GlusterServer:
    def __init__(self, base: Path):
        self.base = base
        self.workdir = base / "glusterd"
        self.workdir.mkdir(parents=True)
        self.volfile = base / "glusterd.vol"
        self.log = base / "glusterd.log"
        self.proc: subprocess.Popen | None = None
        self.volumes: list[str] = []

    def start(self) -> "GlusterServer":
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", GLUSTERD_PORT)) == 0:
                raise RuntimeError(f"port {GLUSTERD_PORT} is taken: another glusterd runs here")
        text = Path("/etc/glusterfs/glusterd.vol").read_text()
        self.volfile.write_text(text.replace("/var/lib/glusterd", str(self.workdir)))
        self.proc = subprocess.Popen(
            ["glusterd", "--no-daemon", f"--volfile={self.volfile}", f"--log-file={self.log}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: self.proc.poll() is not None or self._answers(), START_TIMEOUT_S,
                 "glusterd")  # fmt: skip
        assert self.proc.poll() is None, f"glusterd exited: {self.log.read_text()[-2000:]}"
        return self

    def _answers(self) -> bool:
        return self.cli("volume", "list", check=False).returncode == 0

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["gluster", "--mode=script", *args], capture_output=True,
                                text=True, timeout=CLI_TIMEOUT_S)  # fmt: skip
        if check:
            assert result.returncode == 0, f"gluster {args}: {result.stdout}{result.stderr}"
        return result

    def _brick(self, volume: str) -> Path:
        return self.base / "bricks" / volume

    def create_volume(self, name: str) -> str:
        brick = self._brick(name)
        brick.mkdir(parents=True)
        # The CLI refuses a loopback address as a brick's host; the machine's
        # name is as local (and `force` lets one brick live on it).
        self.cli("volume", "create", name, f"{socket.gethostname()}:{brick}", "force")
        self.volumes.append(name)
        self.cli("volume", "start", name)
        return name

    def brick_pid(self, volume: str) -> int:
        """The PID of the volume's brick process. From the XML status: the table
        wraps a brick's line where its path is long, a test's base directory."""
        status = ElementTree.fromstring(self.cli("volume", "status", volume, "--xml").stdout)
        [pid] = [int(node.findtext("pid")) for node in status.iter("node")
                 if node.findtext("path") == str(self._brick(volume))]  # fmt: skip
        return pid

    def delete_volume(self, name: str) -> None:
        self.cli("volume", "stop", name, "force", check=False)
        self.cli("volume", "delete", name, check=False)
        self.volumes.remove(name)
        shutil.rmtree(self._brick(name), ignore_errors=True)

    def stop(self) -> None:
        for name in list(self.volumes):
            self.delete_volume(name)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ClientMount:
    """The test's own view of a volume (a glusterfs client it runs and ends), to
    look at the repository as stored, beside the hosts under test."""

    def __init__(self, volume: str, path: Path):
        self.path = path
        path.mkdir(parents=True)
        self.proc = subprocess.Popen(
            ["glusterfs", "--no-daemon", "--volfile-server=127.0.0.1", f"--volfile-id={volume}",
             f"--log-file={path}.log", str(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: self.proc.poll() is not None or os.path.ismount(path), START_TIMEOUT_S,
                 f"the gluster mount at {path}")  # fmt: skip
        assert self.proc.poll() is None, f"glusterfs exited: {Path(f'{path}.log').read_text()}"
        os.statvfs(path)

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        try:
            self.proc.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def gluster_mounts_under(base: Path) -> list[Path]:
    """The Gluster client mounts below `base` (those the repofs processes of a
    test made, and left behind if the test killed them)."""
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _, where, kind, *_ = line.split()
            if kind == "fuse.glusterfs" and where.startswith(f"{base}/"):
                found.append(Path(where))
    return found


def unmount_left_behind(base: Path) -> None:
    """Unmounts what killed repofs processes left; their clients exit with it."""
    for where in gluster_mounts_under(base):
        subprocess.run(["fusermount3", "-u", "-z", str(where)], capture_output=True)
    wait_for(lambda: not gluster_mounts_under(base), 10, "gluster mounts to go")
