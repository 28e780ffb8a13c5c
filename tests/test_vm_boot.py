"""A real QEMU guest boots from a disk in the mount, reads it and writes it.

The guest (tests/guest/boot.asm) is a boot sector: through BIOS int 13h it reads
sector 1 and prints its first 16 bytes on the serial port as `READ:<bytes>`, then
writes sector 2 with GUESTWROTE repeated and prints `WROTE`, then exits QEMU.
"""

import re
import subprocess
from pathlib import Path

import pytest
from conftest import pattern, qemu_accel, sh

pytestmark = [pytest.mark.mount, pytest.mark.vm]

GUEST_SOURCE = Path(__file__).resolve().parent / "guest" / "boot.asm"
SECTOR = 512
IMAGE_SIZE = 1 << 20
GUEST_PATTERN = pattern(b"GUESTWROTE", SECTOR)  # what the guest writes to sector 2
GUEST_EXIT_STATUS = 0x21 * 2 + 1  # isa-debug-exit: QEMU exits with (value << 1) | 1
BOOT_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def boot_sector(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("guest") / "boot.bin"
    sh(f"nasm -f bin -o {out} {GUEST_SOURCE}")
    code = out.read_bytes()
    assert len(code) == SECTOR and code.endswith(b"\x55\xaa")
    return code


def disk_image(path: Path, boot_sector: bytes, marker: bytes) -> Path:
    """Boot sector, then sector 1 starting with `marker`, then zeros up to 1 MiB."""
    assert len(marker) == 16
    path.write_bytes((boot_sector + marker).ljust(IMAGE_SIZE, b"\0"))
    return path


def sector(path: Path, index: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(index * SECTOR)
        return f.read(SECTOR)


def boot(disk: Path, workdir: Path) -> str:
    """Boots `disk` until the guest exits QEMU; returns the guest's serial output."""
    serial, output = workdir / "serial.log", workdir / "qemu.log"
    cmd = ["qemu-system-x86_64", *qemu_accel(), "-m", "32", "-nic", "none",
           "-drive", f"file={disk},format=raw,cache=none,if=ide",
           "-nographic", "-display", "none", "-monitor", "none", "-serial", f"file:{serial}",
           "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]  # fmt: skip
    with open(output, "wb") as out:
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        status = qemu.wait(BOOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        status = None
    finally:
        if qemu.poll() is None:
            qemu.kill()  # by PID, this process only
            qemu.wait(BOOT_TIMEOUT_S)
    text = serial.read_text(errors="replace") if serial.exists() else ""
    report = f"serial:\n{text}\nqemu:\n{output.read_text(errors='replace')}"
    assert status is not None, f"the guest did not exit within {BOOT_TIMEOUT_S}s\n{report}"
    assert status == GUEST_EXIT_STATUS, f"qemu exited with {status}\n{report}"
    return text


def guest_read(serial: str) -> bytes:
    """The 16 bytes the guest read from sector 1; asserts its write succeeded."""
    match = re.search(r"READ:(.{16})\nWROTE\n", serial, re.DOTALL)
    assert match, f"no READ:<16 bytes> then WROTE in the serial output:\n{serial}"
    return match.group(1).encode("latin-1")


def test_guest_reads_and_writes_its_disk(repo, tmp_path, boot_sector):
    marker = b"HOSTDATA-1234567"
    image = disk_image(tmp_path / "boot.img", boot_sector, marker)
    sh(f"cp {image} {repo}/disks/vm1")

    assert guest_read(boot(repo / "disks/vm1", tmp_path)) == marker
    assert sector(repo / "disks/vm1", 2) == GUEST_PATTERN
    assert sector(repo / "disks/vm1", 1) == sector(image, 1)


def test_guest_boots_a_disk_made_from_a_snapshot(repo, tmp_path, boot_sector):
    marker = b"GOLDDATA-7654321"
    image = disk_image(tmp_path / "gold.img", boot_sector, marker)
    sh(f"cp {image} {repo}/disks/gold-src")
    sh(f"ln {repo}/disks/gold-src {repo}/snapshots/gold")
    sh(f"ln {repo}/snapshots/gold {repo}/disks/vm2")

    assert guest_read(boot(repo / "disks/vm2", tmp_path)) == marker
    assert sector(repo / "disks/vm2", 2) == GUEST_PATTERN
    assert sector(repo / "snapshots/gold", 2) == bytes(SECTOR)
    assert sector(repo / "disks/gold-src", 2) == bytes(SECTOR)
    sh(f"cmp {image} {repo}/snapshots/gold")
