"""Write opens in a repository several hosts share (drivers/posix.py).

A disk open for writing on one host is EBUSY for write opens on the others
(reads are allowed) until that host closes it, or its lease runs out because
it died (leases.py). The claim is the image record's `writer`: set under the
repository lock, with the check, by the first write open of a host; cleared by
its last close. Removal, renames, snapshots and fixes of an image another host
writes wait or fail as for an image open here (Repository.wait_for_release).
One-host repositories need no claim: the process's own bookkeeping is enough.
"""

import contextlib
import logging

import trio

from repofs import errors
from repofs.model import ImageRecord
from repofs.repository import CLAIM_POLL_S, RELEASE_GRACE_S, Repository

log = logging.getLogger(__name__)


async def claim(repo: Repository, image_id: str) -> ImageRecord:
    """Durable step: the record names this host as its writer; EBUSY if another
    live host still does after RELEASE_GRACE_S (its claim is cleared a moment
    after its close(2) returned)."""
    with trio.move_on_after(RELEASE_GRACE_S):
        while True:
            with contextlib.suppress(errors.Busy):
                return await _claim_now(repo, image_id)
            await trio.sleep(CLAIM_POLL_S)
    return await _claim_now(repo, image_id)


async def _claim_now(repo: Repository, image_id: str) -> ImageRecord:

    def change(record: ImageRecord) -> ImageRecord:
        holder = repo.writer_elsewhere(record)
        if holder is not None:
            raise errors.busy(f"{image_id} is open for writing on host {holder}")
        if record.writer is not None and record.writer != repo.host_id:
            log.warning("%s/%s: taking the write claim of dead host %s",
                        repo.name, image_id, record.writer)  # fmt: skip
        return record.evolve(writer=repo.host_id)

    return await repo.change_image(image_id, change)


async def release(repo: Repository, image_id: str) -> None:
    """Durable step: the record names no writer (if it still names this host)."""

    def change(record: ImageRecord) -> ImageRecord:
        return record.evolve(writer=None) if record.writer == repo.host_id else record

    with contextlib.suppress(errors.NotFound):  # removed meanwhile: nothing to release
        await repo.change_image(image_id, change)


async def drop_stale_claims(repo: Repository) -> None:
    """At connect: claims of this host are its previous process's, which died
    holding them (nothing is open yet)."""
    records = await repo.list_images()
    for record in records:
        if record.writer == repo.host_id:
            log.info("%s/%s: dropping this host's write claim of a previous run",
                     repo.name, record.id)  # fmt: skip
            await release(repo, record.id)
