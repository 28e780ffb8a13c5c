"""The API of the new storage API: one module per operation. No FUSE here."""
