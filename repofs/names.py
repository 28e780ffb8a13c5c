"""The naming rule shared by image IDs and repository names (DESIGN.md, "IDs")."""

import re

from repofs import errors

MAX_NAME = 128
_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}")


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def check_name(name: str, what: str = "ID") -> str:
    """Returns `name` if it is a valid ID, else raises EINVAL saying why."""
    if not is_valid_name(name):
        raise errors.invalid(
            f"{what} {name!r} is not 1-{MAX_NAME} characters of A-Z a-z 0-9 . _ - "
            "not starting with '.'"
        )
    return name
