"""Mounts at boot: `make install` (into a temporary prefix), then the command
line of the installed systemd unit, run as systemd would run it (there is no
systemd here), and the fstab helper, run as mount(8) would run it."""

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, children, mount_pid, sh, wait_for

pytestmark = pytest.mark.mount

START_S = 30
STOP_S = 30


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    sh(f"make install PREFIX={root}/usr SBINDIR={root}/sbin UNITDIR={root}/units", cwd=REPO,
       timeout=600)  # fmt: skip
    return root


def systemd_command(unit: str, instance: str, env_file: str, places: dict[str, Path]) -> list[str]:
    """The unit's ExecStart as systemd runs it: %i is the instance, $VAR is split
    at white space (the variables from its EnvironmentFile). `places` moves the
    unit's system directories into the test's."""
    line = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).replace("%i", instance)
    for system_dir, here in places.items():
        line = line.replace(system_dir, f"{here}/")
    env = dict(re.findall(r"^(\w+)=(.*)$", env_file, re.M))
    words = []
    for word in line.split():
        words += env.get(word[1:], "").split() if word.startswith("$") else [word]
    return words


def test_the_unit_mounts_tells_systemd_and_unmounts_on_sigterm(installed, tmp_path):
    unit = (installed / "units/repofs@.service").read_text()
    assert re.search(r"^Type=notify$", unit, re.M) and re.search(r"^KillMode=mixed$", unit, re.M)
    assert re.search(r"^EnvironmentFile=-/etc/repofs/%i.env$", unit, re.M)
    (tmp_path / "r2").mkdir()
    connect = tmp_path / "images.connect"
    connect.write_text(f"# the shared images\nr2 localfs-1.0 path={tmp_path}/r2\n")
    env_file = f"REPOFS_OPTIONS=--allow-other --connect-file {connect}\n"
    places = {"/srv/repofs/": tmp_path / "srv", "/var/lib/repofs/": tmp_path / "lib"}
    cmd = systemd_command(unit, "images", env_file, places)
    assert cmd[0] == f"{installed}/usr/bin/repofs", cmd
    mnt = tmp_path / "srv/images"

    notifications = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notifications.bind(str(tmp_path / "notify"))
    notifications.settimeout(START_S)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                            stderr=open(tmp_path / "stderr", "w"))  # fmt: skip
    try:
        said = notifications.recv(4096).decode().split("\n")
        assert said == ["READY=1", f"STATUS=mounted at {mnt}"]
        assert mount_pid(mnt) == proc.pid  # mounted before it said so
        assert sorted(os.listdir(mnt)) == ["README", "connect", "default", "r2"]
        sh(f"truncate -s 1M {mnt}/r2/disks/vm1")
        daemons = children(proc.pid)
        assert daemons, "no qemu-storage-daemon"
        proc.send_signal(signal.SIGTERM)  # systemctl stop, KillMode=mixed
        assert notifications.recv(4096) == b"STOPPING=1"
        assert proc.wait(STOP_S) == 0
        assert not os.path.ismount(mnt)
        for pid in daemons:
            wait_for(lambda p=pid: not os.path.exists(f"/proc/{p}"), 10, "the storage daemon")
    finally:
        notifications.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_S)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    log = (tmp_path / "stderr").read_text()
    assert re.search(r"operation=create_virtual_disk repo=r2 image=vm1 .*outcome=ok", log), log
    assert (tmp_path / "lib/images/default").is_dir()  # the data directory of the instance


def test_the_fstab_helper_mounts_in_the_background(installed, tmp_path):
    helper = installed / "sbin/mount.fuse.repofs"
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    (tmp_path / "r2").mkdir()
    connect = tmp_path / "connect"
    connect.write_text(f"r2 localfs-1.0 path={tmp_path}/r2\n")
    refused = sh(f"{helper} {data} {mnt} -o ro", check=False)
    assert refused.returncode == 2 and "does not mount read-only" in refused.stderr
    refused = sh(f"{helper} {data} {mnt} -o allow_other,cache=yes", check=False)
    assert refused.returncode == 2 and "unknown option 'cache=yes'" in refused.stderr
    assert not mnt.exists() or not os.path.ismount(mnt)

    # As mount(8) runs it for: DATA MNT fuse.repofs allow_other,... 0 0
    options = (f"rw,nosuid,nodev,allow_other,connect_file={connect},host_id=h1,"
               "log_level=warning,_netdev,x-systemd.requires=network-online.target")  # fmt: skip
    sh(f"{helper} {data} {mnt} -o {options}", timeout=START_S + 10)
    pid = mount_pid(mnt)
    try:
        assert pid and sorted(os.listdir(mnt)) == ["README", "connect", "default", "r2"]
        assert "user_id=0" in sh(f"grep ' {mnt} ' /proc/mounts").stdout
        assert "allow_other" in sh(f"grep ' {mnt} ' /proc/mounts").stdout
        repository = (mnt / "default/repository").read_text()
        assert '"this_host": true' in repository and '"host": "h1"' in repository
        sh(f"truncate -s 1M {mnt}/default/disks/vm1")
        sh(f"umount {mnt}")  # util-linux umount, as at shutdown
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), STOP_S, "repofs to exit")
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    log = (data / "repofs.log").read_text()
    assert " INFO " not in log, log  # log_level=warning
