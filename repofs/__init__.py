"""repofs: VM disk-image management exposed as a FUSE filesystem."""
