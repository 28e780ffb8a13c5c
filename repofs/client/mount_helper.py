"""`mount.fuse.repofs DATA_DIR MOUNTPOINT -o OPTIONS`: what mount(8) runs for
an fstab line of type fuse.repofs (`make install` puts it in /sbin):

    /var/lib/repofs /srv/repofs fuse.repofs allow_other,connect_file=/etc/repofs/connect 0 0

It mounts like `repofs mount` (in the background, returning once the mount is
live). repofs's options: allow_other, host_id=ID, connect_file=FILE,
log_file=FILE, log_level=LEVEL. Options for mount(8) and systemd (rw, auto,
noauto, nofail, _netdev, x-systemd.*, ...) are left to them; any other is
refused, as is ro (images are written through the mount).
"""

import argparse
import sys

from repofs.client import mount_command

# repofs's options and their `repofs mount` flags; those in FLAGS take no value.
OPTIONS = {"allow_other": "--allow-other", "host_id": "--host-id",
           "connect_file": "--connect-file", "log_file": "--log-file",
           "log_level": "--log-level"}  # fmt: skip
FLAGS = ("allow_other",)
# What fstab lines carry for mount(8), systemd or the kernel's generic flags.
NOT_OURS = frozenset({"rw", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser",
                      "users", "owner", "group", "suid", "nosuid", "dev", "nodev", "exec",
                      "noexec", "async", "sync", "atime", "noatime", "relatime", "strictatime",
                      "nodiratime"})  # fmt: skip


def mount_arguments(argv: list[str]) -> list[str]:
    """The `repofs mount` arguments of a mount helper's command line."""
    parser = argparse.ArgumentParser(
        prog="mount.fuse.repofs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data_dir", help="the mount's data directory (fstab's first field)")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[], help="OPT[,OPT...]")
    # mount(8)'s own flags to helpers: sloppy, fake, no mtab, verbose; the type.
    for flag in ("-s", "-f", "-n", "-v"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-t", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mount = [args.mountpoint, "--data-dir", args.data_dir]
    for option in ",".join(args.options).split(","):
        key, sep, value = option.partition("=")
        if not option or key in NOT_OURS or key.startswith("x-") or key == "comment":
            continue
        if key == "ro":
            parser.error("repofs does not mount read-only: images are written through it")
        if key not in OPTIONS or bool(sep) == (key in FLAGS):
            parser.error(f"unknown option {option!r}; repofs takes allow_other, host_id=ID, "
                         "connect_file=FILE, log_file=FILE, log_level=LEVEL")  # fmt: skip
        mount += [OPTIONS[key], value] if sep else [OPTIONS[key]]
    return mount


def main() -> None:
    parser = argparse.ArgumentParser(prog="repofs mount")
    mount_command.add_arguments(parser)
    args = parser.parse_args(mount_arguments(sys.argv[1:]))
    mount_command.exit_with(mount_command.mount, args)
