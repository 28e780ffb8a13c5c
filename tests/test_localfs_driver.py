"""The localfs-1.0 driver's rules, without a mount."""

import errno
import json
import logging
import time
import uuid

import pytest
import trio
from conftest import check_of

from repofs.drivers import atomic, posix
from repofs.drivers.localfs import LocalRepository
from repofs.drivers.posix import SharedRepository
from repofs.errors import RepofsError
from repofs.model import ImageKind, ImageRecord, VolumeFormat

pytestmark = pytest.mark.unit


@pytest.fixture
def driver(tmp_path):
    repo = LocalRepository.open(tmp_path)
    yield repo
    repo.close()


def fails_with(expected: int, call, *args) -> str:
    with pytest.raises(RepofsError) as info:
        call(*args)
    assert info.value.errno == expected
    return info.value.reason


def new_disk(driver, image_id="vm1") -> ImageRecord:
    volume = driver.create_raw_volume(4096, preallocate=False)
    return driver.create_image(ImageRecord(image_id, ImageKind.VIRTUAL_DISK, 4096, (volume,)))


def test_formatting_writes_the_marker_last(tmp_path):
    LocalRepository.open(tmp_path).close()
    marker = json.loads((tmp_path / "repofs.json").read_text())
    assert marker == {"format": "localfs-1.0", "version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hosts", "images", "locks", "repofs.json", "reserve", "tasks", "trash", "volumes",
    ]  # fmt: skip


def test_a_non_empty_directory_is_not_formatted(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    fails_with(errno.EINVAL, LocalRepository.open, tmp_path)
    assert not (tmp_path / "repofs.json").exists()


def test_a_crash_while_formatting_is_formatted_again(tmp_path):
    (tmp_path / "images").mkdir()  # what a crash before the marker leaves
    LocalRepository.open(tmp_path).close()
    assert (tmp_path / "repofs.json").exists()


def test_generation_compare_and_swap(driver):
    record = new_disk(driver)
    assert record.generation == 1
    newer = driver.update_image(record.evolve(user_data={"user.a": "1"}))
    assert newer.generation == 2
    reason = fails_with(errno.ESTALE, driver.update_image, record.evolve(size=1))
    assert "generation 2, expected 1" in reason
    assert driver.read_image("vm1") == newer


def test_create_refuses_a_taken_id(driver):
    new_disk(driver)
    fails_with(errno.EEXIST, new_disk, driver)


def test_trash_restore_and_rename_are_single_renames(driver, tmp_path):
    new_disk(driver)
    driver.trash_image("vm1")
    assert driver.list_image_ids() == [] and driver.list_image_ids(trashed=True) == ["vm1"]
    driver.restore_image("vm1")
    driver.rename_image("vm1", "vm2")
    assert driver.list_image_ids() == ["vm2"]
    assert driver.read_image("vm2").id == "vm2"
    assert not list((tmp_path / "images").glob(".*"))


def test_one_process_per_repository(tmp_path):
    first = LocalRepository.open(tmp_path)
    try:
        fails_with(errno.EBUSY, LocalRepository.open, tmp_path)
    finally:
        first.close()
    LocalRepository.open(tmp_path).close()


def test_volumes_have_unique_names_and_their_format(driver):
    a, b = driver.new_volume(VolumeFormat.QCOW2), driver.new_volume(VolumeFormat.QCOW2)
    assert a != b and a.file_name.endswith(".qcow2")


def test_growing_a_raw_volume_drops_unrecorded_bytes(driver):
    record = new_disk(driver)
    path = driver.volume_path(record.top)
    path.write_bytes(b"s" * 8192)  # a crash left growth the record does not know
    driver.grow_raw_volume(record.top, 4096, 12288, preallocate=False)
    assert path.read_bytes()[4096:] == bytes(8192)


def test_a_young_unnamed_volume_of_a_shared_repository_is_not_garbage(tmp_path, monkeypatch):
    """posix-1.0: another host may be between making a volume and writing the
    record that names it, so a volume no record names is garbage only once it
    is SETTLE_S old by the storage's clock (its mtime and ctime against a probe
    file's); localfs-1.0 (one host) cleans it at once. (A volume this process
    is making is never garbage: test_fixes.py.)"""
    monkeypatch.setattr(posix, "SETTLE_S", 1.0)
    for name in ("shared", "local"):
        (tmp_path / name).mkdir()
    shared = SharedRepository.open(tmp_path / "shared")
    local = LocalRepository.open(tmp_path / "local")
    try:
        for name in ("shared", "local"):  # what a process that crashed left
            (tmp_path / name / "volumes" / f"{uuid.uuid4().hex}.raw").write_bytes(bytes(4096))
        assert [f.kind for f in check_of(local)] == ["clean"]
        assert check_of(shared) == []
        time.sleep(posix.SETTLE_S + 0.1)
        [volume] = shared.list_volumes()
        [fix] = check_of(shared)
        assert fix.kind == "clean" and fix.data.volumes == (volume.file_name,)
    finally:
        shared.close()
        local.close()


def test_a_missing_record_is_reported_at_once_in_a_local_repository(tmp_path, monkeypatch):
    """Every new name's lookup (`truncate`, `ln`) reads a record that is not
    there: a local file system never hides a name being renamed, so that read
    is not tried again (30 ms of pauses); a shared repository's is (Gluster
    may hide it for milliseconds)."""
    pauses = []
    monkeypatch.setattr(atomic.time, "sleep", pauses.append)
    for name in ("shared", "local"):
        (tmp_path / name).mkdir()
    shared = SharedRepository.open(tmp_path / "shared")
    local = LocalRepository.open(tmp_path / "local")
    try:
        fails_with(errno.ENOENT, local.read_image, "new")
        assert pauses == []
        fails_with(errno.ENOENT, shared.read_image, "new")
        assert len(pauses) == atomic.STALE_RETRIES - 1
    finally:
        shared.close()
        local.close()


def test_a_driver_call_on_the_trio_thread_is_logged(driver, caplog):
    """Every blocking method of a driver belongs on its repository's threads
    (repository.py); one called on the trio thread stalls the whole mount while
    the storage takes its time, so it is logged as an error, saying where from
    (the tests' log checks then fail). Pure ones are not."""

    async def main() -> None:
        driver.read_options()
        await trio.to_thread.run_sync(driver.list_images)
        driver.volume_path(driver.new_volume(VolumeFormat.RAW))

    with caplog.at_level(logging.ERROR, logger="repofs.drivers.blocking"):
        trio.run(main)
    [said] = caplog.records
    assert said.getMessage().startswith("LocalRepository.read_options called on the trio thread")
    assert "test_a_driver_call_on_the_trio_thread_is_logged" in said.stack_info
