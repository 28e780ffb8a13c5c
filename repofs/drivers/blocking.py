"""The drivers' methods block on storage: above drivers/, only the repository
facade calls them (repofs/repository.py), always on the repository's own threads.
A call made on the trio thread instead stalls every request of the mount for as
long as the storage takes (a Gluster brick that stopped answering: forever), so
each one is said in the log as the bug it is, with where it came from."""

import functools
import inspect
import logging

import trio

log = logging.getLogger(__name__)


def off_the_loop(cls: type) -> type:
    """Wraps the public methods `cls` defines (not its class methods, static
    methods or properties, nor those it names in `_PURE`, which compute without
    storage) so that a call on the trio thread is logged."""
    pure = getattr(cls, "_PURE", ())
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or name in pure or not inspect.isfunction(member):
            continue
        setattr(cls, name, _checked(f"{cls.__name__}.{name}", member))
    return cls


def _checked(name: str, method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        if trio.lowlevel.in_trio_run():
            log.error("%s called on the trio thread: every request of the mount waits for "
                      "it (it belongs on its repository's threads)", name,
                      stack_info=True)  # fmt: skip
        return method(*args, **kwargs)

    return call
