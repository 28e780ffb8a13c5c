"""Repository formats: on-disk layout, volumes, metadata and locks."""
