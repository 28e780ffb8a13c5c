"""What libvirt on a stock install needs from the mount (docs/libvirt.md):
QEMU running as another user opens images through --allow-other, after libvirt's
dynamic_ownership chowned them; its remember_owner xattrs are refused cleanly."""

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import Mount, sh

pytestmark = pytest.mark.mount

QEMU_USER = 64055  # Debian's libvirt-qemu uid; any unprivileged uid will do


def as_qemu_user(cmd: str):
    return sh(f"setpriv --reuid={QEMU_USER} --regid={QEMU_USER} --clear-groups {cmd}",
              check=False)  # fmt: skip


@pytest.fixture
def public_dir():
    """A directory the unprivileged user can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="repofs-libvirt-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_another_user_opens_an_image_only_with_allow_other(public_dir):
    for allow_other, expected in ((True, 0), (False, errno.EACCES)):
        (public_dir / str(allow_other)).mkdir()
        m = Mount(public_dir / str(allow_other), ("--allow-other",) if allow_other else ())
        try:
            m.start()
            disk = m.default / "disks/vm1"
            sh(f"truncate -s 1M {disk}")
            sh(f"chown {QEMU_USER}:{QEMU_USER} {disk}")
            sh(f"chmod 600 {disk}")
            result = as_qemu_user(f"dd if=/dev/zero of={disk} bs=4k count=1 conv=notrunc")
            if expected == 0:
                assert result.returncode == 0, result.stderr
                other = as_qemu_user(f"cat {m.default}/snapshots/nothing")
                assert "No such file" in other.stderr
            else:
                assert result.returncode != 0 and "Permission denied" in result.stderr
        finally:
            m.stop()


def test_mode_bits_are_enforced_for_other_users(public_dir):
    m = Mount(public_dir, ("--allow-other",))
    try:
        m.start()
        disk = m.default / "disks/vm1"
        sh(f"truncate -s 1M {disk}")
        sh(f"chmod 600 {disk}")  # owned by root: the qemu user may not open it
        result = as_qemu_user(f"dd if={disk} of=/dev/null bs=4k count=1")
        assert result.returncode != 0 and "Permission denied" in result.stderr
    finally:
        m.stop()


def test_other_users_see_but_change_nothing_but_what_they_own(public_dir):
    """docs/permissions.md: with --allow-other, the kernel checks every access
    against the modes repofs shows (default_permissions). Another user may look
    around, but not make, remove, link, rename or queue anything, nor connect a
    repository or change its options; an image chowned to it is its to write."""
    m = Mount(public_dir, ("--allow-other",))
    try:
        m.start()
        repo = m.default
        sh(f"truncate -s 1M {repo}/disks/vm1")
        sh(f"truncate -s 1M {repo}/disks/gone")
        sh(f"rm {repo}/disks/gone")  # a clean is offered
        for look in (f"ls {repo}/disks {repo}/fixes", f"cat {repo}/status/vm1 {m.path}/README",
                     f"getfattr -d {repo}/disks/vm1"):  # fmt: skip
            result = as_qemu_user(look)
            assert result.returncode == 0, f"{look}: {result.stderr}"
        refused = [
            f"truncate -s 1M {repo}/disks/mine",
            f"rm {repo}/disks/vm1",
            f"ln {repo}/disks/vm1 {repo}/snapshots/s2",
            f"mv {repo}/disks/vm1 {repo}/disks/vm2",
            f"mv {repo}/fixes/clean-gone {repo}/tasks/",
            f"mkdir {m.path}/r2",
            f"sh -c 'echo r3 localfs-1.0 path=/tmp > {m.path}/connect'",
            f"setfattr -n user.repofs.strategy -v performance {repo}",
            f"dd if=/dev/zero of={repo}/disks/vm1 bs=4k count=1 conv=notrunc",
        ]
        for command in refused:
            result = as_qemu_user(command)
            assert result.returncode != 0, f"{command} worked"
            # EACCES from the modes; EPERM for ln (the kernel's protected_hardlinks)
            assert re.search("Permission denied|Operation not permitted", result.stderr), (
                f"{command}: {result.stderr}"
            )
        assert sorted(os.listdir(repo / "disks")) == ["vm1"] and not os.listdir(repo / "tasks")
        sh(f"chown {QEMU_USER}:{QEMU_USER} {repo}/disks/vm1")
        result = as_qemu_user(f"dd if=/dev/zero of={repo}/disks/vm1 bs=4k count=1 conv=notrunc")
        assert result.returncode == 0, result.stderr
    finally:
        m.stop()
