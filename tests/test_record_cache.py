"""The live records a repository keeps (repository.py live_records): a change
made through it goes into the kept list as it is made, instead of making the
next listing read every record again (a snapshot's own status asks for its
dependents, which would then be O(images) per snapshot)."""

import trio
from conftest import MiB

from repofs import repository
from repofs.drivers.localfs import LocalRepository
from repofs.leases import HostWatch
from repofs.model import ImageKind, ImageRecord, Owner, VolumeFormat
from repofs.repository import Repository


def new_record(driver: LocalRepository, image_id: str) -> ImageRecord:
    volume = driver.new_volume(VolumeFormat.RAW)
    driver.volume_path(volume).write_bytes(b"")
    return ImageRecord(image_id, ImageKind.VIRTUAL_DISK, MiB, (volume,), owner=Owner(0, 0, 0o644))


def test_changes_made_here_need_no_listing_of_every_record(tmp_path, monkeypatch):
    # Kept for the whole test however slow the machine: only changes are at stake.
    monkeypatch.setattr(repository, "RECORDS_REUSE_S", 3600)
    driver = LocalRepository.open(tmp_path)
    listings = []
    list_images = driver.list_images
    monkeypatch.setattr(driver, "list_images", lambda *a: listings.append(a) or list_images(*a))

    async def main() -> None:
        repo = Repository("r", driver, driver.format, {}, False, "h", HostWatch())
        try:
            for image_id in ("b", "d"):
                await repo.run(driver.create_image, new_record(driver, image_id))
            assert [r.id for r in await repo.list_images()] == ["b", "d"]
            assert len(listings) == 1
            await repo.run(driver.create_image, new_record(driver, "c"))
            await repo.run(driver.create_image, new_record(driver, "a"))
            b = await repo.read_image("b")
            await repo.update_image(b.evolve(size=2 * MiB))
            await repo.trash_image("d")
            await repo.change_image("d", lambda r: r.evolve(size=3 * MiB), trashed=True)
            await repo.rename_image("c", "e")
            await repo.trash_image("a")
            await repo.restore_image("a")
            kept = await repo.list_images()
            assert len(listings) == 1, "a change made here made the records be read again"
            assert [(r.id, r.size) for r in kept] == [("a", MiB), ("b", 2 * MiB), ("e", MiB)]
            assert kept == driver.list_images()  # what storage holds, generations too
        finally:
            driver.on_change = driver.on_task_change = None

    try:
        trio.run(main)
    finally:
        driver.close()
