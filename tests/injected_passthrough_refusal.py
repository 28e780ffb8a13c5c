"""`python -m injected_passthrough_refusal mount ...`: repofs whose kernel refuses
every backing file with EPERM, as it does a server without CAP_SYS_ADMIN. Tests
run as root, so the refusal cannot be caused for real while the test can still
see the mount."""

import errno
import os

import pyfuse3

from repofs.cli import main


def _refused(fd: int) -> int:
    raise OSError(errno.EPERM, os.strerror(errno.EPERM))


pyfuse3.passthrough_open = _refused
main()
