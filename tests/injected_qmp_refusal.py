"""`python -m injected_qmp_refusal mount ...`: repofs whose storage daemon refuses
the export that follows the first resize once, as QEMU did when repofs exported
the wrong node (a read-only one) after a live snapshot. For the test that a daemon
whose nodes no longer match repofs's is restarted, not left so: with that bug
fixed, QEMU has no refusal left that a test can cause on purpose."""

from repofs import errors
from repofs.cli import main
from repofs.qemu.qmp import QmpConnection

_real_execute = QmpConnection.execute
_resized = False
_refused = False


async def _refusing_execute(self, command, arguments=None, **kwargs):
    global _resized, _refused
    if command == "block_resize":
        _resized = True
    elif command == "block-export-add" and _resized and not _refused:
        _refused = True
        raise errors.io_error("QMP block-export-add failed: injected refusal")
    return await _real_execute(self, command, arguments, **kwargs)


QmpConnection.execute = _refusing_execute
main()
