"""`python -m injected_bug mount ...`: repofs with one injected bug, for the test
that an unexpected exception in a handler is EIO + traceback, never a dead mount.
(A real bug cannot be provoked on purpose: this is the one allowed fault mock.)"""

from repofs.cli import main
from repofs.ops import image_status

_real_status = image_status._status


def _buggy_status(repo, record, *rest):
    if record.id == "bug":
        raise RuntimeError("injected bug")
    return _real_status(repo, record, *rest)


image_status._status = _buggy_status
main()
