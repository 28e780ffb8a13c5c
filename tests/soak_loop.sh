#!/bin/bash
# One admin's loop for the soak test (tests/test_soak.py): until END (epoch
# seconds), on repositories R1 and R2 of a repofs mount, with names of its own
# (prefix P): create and write a disk, snapshot it, copy the snapshot into R2,
# make a disk on it, then either remove everything again (and queue the cleans)
# or keep it and note its checksum in MANIFEST. Any command that fails ends the
# loop with its error: nothing here is expected to be refused.
set -euo pipefail
R1=$1 R2=$2 P=$3 END=$4 MANIFEST=$5

n=0
while [ "$(date +%s)" -lt "$END" ]; do
    n=$((n + 1))
    d=$P-$n
    truncate -s 4M "$R1/disks/$d"
    dd if=/dev/urandom of="$R1/disks/$d" bs=64k count=8 seek=$((RANDOM % 56)) \
        conv=notrunc status=none
    ln "$R1/disks/$d" "$R1/snapshots/$d-s"
    ln "$R1/snapshots/$d-s" "$R2/snapshots/$d-s"
    ln "$R1/snapshots/$d-s" "$R1/disks/$d-c"
    cmp "$R1/disks/$d-c" "$R1/snapshots/$d-s"
    if [ $((n % 2)) -eq 0 ]; then
        rm "$R1/disks/$d-c" "$R1/disks/$d"
        # EBUSY while its copy into R2 is not finished: the admin tries again.
        for _ in $(seq 600); do
            rm "$R1/snapshots/$d-s" 2>/dev/null && break
            sleep 0.1
        done
        [ ! -e "$R1/snapshots/$d-s" ] || rm "$R1/snapshots/$d-s"  # says why
        for fix in "$R1"/fixes/clean-"$P"-*; do
            [ -e "$fix" ] && mv "$fix" "$R1/tasks/" 2>/dev/null || true
        done
    else
        echo "$R1/disks/$d $(sha1sum < "$R1/disks/$d" | cut -d' ' -f1)" >> "$MANIFEST"
        echo "$R2/snapshots/$d-s $(sha1sum < "$R1/snapshots/$d-s" | cut -d' ' -f1)" >> "$MANIFEST"
    fi
done
echo "$n"
