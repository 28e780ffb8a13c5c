"""QEMU tools: qemu-img, qemu-storage-daemon (QMP through qemu.qmp), NBD client."""
