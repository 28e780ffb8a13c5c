"""The text of the mount's read-only files."""

import json

README = """\
repofs: VM disk images as files. Each directory here is a connected repository.

  truncate -s 20G default/disks/vm1          create a thin virtual disk
  ln default/disks/vm1 default/snapshots/s1  snapshot it (O(1))
  ln default/snapshots/s1 default/disks/vm2  a new disk based on the snapshot
  cat default/status/vm2                     its state and progress, as JSON
  rm default/disks/vm2                       remove it; mv default/trash/vm2 default/disks/ undoes

Also: ls default/fixes (what a check finds), mv default/fixes/F default/tasks/ (fix it),
cat default/tasks/T (its progress), cat default/events (every change, as it happens),
getfattr -d default/disks/vm1, setfattr -n user.owner -v alice default/disks/vm1,
mkdir NAME (a new repository), echo "NAME localfs-1.0 path=/dir" > connect,
rmdir NAME (disconnect), cat default/repository. Across repositories, ln copies:
ln default/snapshots/s1 NAME/snapshots/s1, ln default/disks/vm1 NAME/disks/vm1 (clone).
Point QEMU or libvirt at an image path with format=raw. On XFS or btrfs, snapshots
are clones and the kernel reads and writes raw disks itself (passthrough; repofs
status says where it is on, and why not elsewhere).
At a glance: repofs status . (every image and task), repofs watch . (progress bars),
repofs wait default/snapshots/s1 (until it is optimized), repofs why . (the reason
of each latest refusal, where the shell said only "Invalid argument" or the like);
repofs --help says more.
"""


def to_json(data: dict) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
