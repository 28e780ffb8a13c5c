"""Fault injection for crash tests: REPOFS_CRASH_AT names a durable step boundary
("optimize:record", "snapshot:switch") at which the process dies as if killed
with -9. The exact moment between two durable steps cannot be hit from outside."""

import logging
import os

log = logging.getLogger(__name__)

CRASH_AT = os.environ.get("REPOFS_CRASH_AT")


def crash_point(where: str) -> None:
    if CRASH_AT == where:
        log.warning("REPOFS_CRASH_AT=%s: exiting now", where)
        logging.shutdown()
        os._exit(99)
