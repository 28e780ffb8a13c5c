"""`python -m injected_commit_failure mount ...`: repofs whose first `qemu-img
commit` fails, as one would on a storage error. An offline flatten then fails
after its step 3 (the disk's top already over the target), for the test that a
later run, with the disk open, ends live by an active commit into the target."""

from repofs import errors
from repofs.cli import main
from repofs.qemu import img

_real_commit = img.commit
_failed = False


async def _failing_commit(path):
    global _failed
    if not _failed:
        _failed = True
        raise errors.io_error("qemu-img commit failed: injected failure")
    return await _real_commit(path)


img.commit = _failing_commit
main()
