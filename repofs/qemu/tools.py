"""Finding the QEMU programs repofs runs, with a clear error when one is missing."""

import shutil

from repofs import errors

PACKAGE_OF = {
    "qemu-img": "qemu-utils",
    "qemu-storage-daemon": "qemu-system-common",
}


def require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise errors.not_found(
            f"{program} not found: install the Debian package {PACKAGE_OF[program]} "
            "(or run `make run`, which installs it)"
        )
    return path
