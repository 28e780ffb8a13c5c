"""What libvirt on a stock install needs from the mount (docs/libvirt.md):
QEMU running as another user opens images through --allow-other, after libvirt's
dynamic_ownership chowned them; its remember_owner xattrs are refused cleanly."""

import errno
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
