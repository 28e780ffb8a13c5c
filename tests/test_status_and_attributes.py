"""getImageStatus, user.repofs.* attributes, userData and ownership."""

import errno
import json
import os

import pytest
import xattr
from conftest import MiB, errno_of, sh

pytestmark = pytest.mark.mount

STATUS_FIELDS = {
    "id", "kind", "state", "host", "stage", "percent_complete", "last_error", "base",
    "chain", "size", "allocated", "generation",
}  # fmt: skip


def test_status_json_has_every_field(repo):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    for image_id, kind, base in (("vm1", "virtual-disk", "s1"), ("s1", "snapshot", None)):
        status = json.loads((repo / "status" / image_id).read_text())
        assert STATUS_FIELDS <= set(status)
        assert (status["id"], status["kind"], status["base"]) == (image_id, kind, base)
        assert (status["state"], status["percent_complete"], status["size"]) == (
            "optimized", -1, MiB,
        )  # fmt: skip
        assert status["generation"] >= 1
    assert sorted(os.listdir(repo / "status")) == ["s1", "vm1"]


def test_repofs_attributes(repo):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    attrs = xattr.xattr(str(repo / "disks/vm1"))
    assert attrs["user.repofs.kind"] == b"virtual-disk"
    assert attrs["user.repofs.status"] == b"optimized"
    assert attrs["user.repofs.percent_complete"] == b"-1"
    assert attrs["user.repofs.base"] == b"s1"
    assert len(attrs["user.repofs.chain"].split(b",")) == 2
    assert xattr.getxattr(str(repo / "snapshots/s1"), "user.repofs.dependents") == b"vm1"
    dump = sh(f"getfattr -d {repo}/disks/vm1").stdout
    assert 'user.repofs.kind="virtual-disk"' in dump and 'user.repofs.base="s1"' in dump
    assert (
        errno_of(xattr.getxattr, str(repo / "disks/vm1"), "user.repofs.last_error") == errno.ENODATA
    )


def test_user_data_is_persisted_listed_and_removable(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"setfattr -n user.owner -v alice {repo}/disks/vm1")
    sh(f"setfattr -n user.note -v 'boots debian 12' {repo}/disks/vm1")
    xattr.setxattr(str(repo / "disks/vm1"), "user.binary", bytes(range(256)))
    mount.remount()
    attrs = xattr.xattr(str(repo / "disks/vm1"))
    assert attrs["user.owner"] == b"alice"
    assert attrs["user.binary"] == bytes(range(256))
    dump = sh(f"getfattr -d {repo}/disks/vm1").stdout
    assert 'user.owner="alice"' in dump and 'user.note="boots debian 12"' in dump
    sh(f"setfattr -x user.note {repo}/disks/vm1")
    assert "user.note" not in xattr.xattr(str(repo / "disks/vm1")).list()
    assert errno_of(xattr.removexattr, str(repo / "disks/vm1"), "user.note") == errno.ENODATA


def test_attribute_refusals(repo, mount):
    sh(f"truncate -s 1M {repo}/disks/vm1")
    path = str(repo / "disks/vm1")
    cases = [
        (lambda: xattr.getxattr(path, "user.unset"), errno.ENODATA),
        (lambda: xattr.setxattr(path, "user.big", b"x" * 5000), errno.ERANGE),
        (lambda: xattr.setxattr(path, "user.repofs.status", b"broken"), errno.ENOTSUP),
        (lambda: xattr.setxattr(path, "trusted.libvirt.security.dac", b"+0:+0"), errno.ENOTSUP),
        (lambda: xattr.setxattr(str(repo), "user.repofs.strategy", b"fastest"), errno.EINVAL),
        (lambda: xattr.setxattr(str(repo), "user.repofs.autofix", b"maybe"), errno.EINVAL),
    ]
    for call, expected in cases:
        assert errno_of(call) == expected
    mount.expect_log("value of user.big is 5000 bytes; the limit is 4096")


def test_repository_options_persist(repo, mount):
    sh(f"setfattr -n user.repofs.strategy -v performance {repo}")
    sh(f"setfattr -n user.repofs.autofix -v false {repo}")
    sh(f"setfattr -n user.repofs.participating -v default,r2 {repo}")
    sh(f"setfattr -n user.repofs.image_hints -v gold=r2 {repo}")
    mount.remount()
    attrs = xattr.xattr(str(repo))
    assert attrs["user.repofs.strategy"] == b"performance"
    assert attrs["user.repofs.autofix"] == b"false"
    assert attrs["user.repofs.participating"] == b"default,r2"
    assert attrs["user.repofs.image_hints"] == b"gold=r2"
    sh(f"setfattr -x user.repofs.strategy {repo}")
    assert attrs["user.repofs.strategy"] == b"space"
    facts = json.loads((repo / "repository").read_text())
    assert facts["options"]["user.repofs.autofix"] == "false"


def test_chown_and_chmod_persist(repo, mount):
    """What libvirt's dynamic_ownership does to a disk before it starts QEMU."""
    sh(f"truncate -s 1M {repo}/disks/vm1")
    sh(f"chown 107:108 {repo}/disks/vm1")
    sh(f"chmod 6600 {repo}/disks/vm1")  # no set-user-ID or set-group-ID bit is kept
    mount.remount()
    st = os.stat(repo / "disks/vm1")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (107, 108, 0o600)
    sh(f"ln {repo}/disks/vm1 {repo}/snapshots/s1")
    assert os.stat(repo / "snapshots/s1").st_mode & 0o777 == 0o400


def test_new_disk_owner_and_mode_follow_the_creator(repo):
    old = os.umask(0o027)
    try:
        fd = os.open(repo / "disks/vm1", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
    finally:
        os.umask(old)
    assert os.stat(repo / "disks/vm1").st_mode & 0o777 == 0o640


def test_trusted_attributes_are_refused_so_libvirt_skips_remembering(repo, mount):
    """libvirt's virSecuritySetRememberedLabel reads the refcount attribute first
    and skips remembering on ENOTSUP; ENODATA would make it try to set it."""
    sh(f"truncate -s 1M {repo}/disks/vm1")
    assert (
        errno_of(xattr.getxattr, str(repo / "disks/vm1"), "trusted.libvirt.security.ref_dac")
        == errno.ENOTSUP
    )
    result = sh(f"setfattr -n trusted.libvirt.security.dac -v x {repo}/disks/vm1", check=False)
    assert result.returncode != 0 and "not supported" in result.stderr
    mount.expect_log("only user.\\* attributes are supported")
