"""The FUSE layer: path <-> object, errno, xattrs, rendering. No storage logic."""
