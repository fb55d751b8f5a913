"""Specification of how Galaxy10 files are opened and read when they are hostile: nothing is read from another
file, nothing is allocated for what a file only declares, no chunk is inflated past its declared size; each is one
GalaxyClassError naming the file and what is wrong."""

import subprocess
import sys
import time
import tracemalloc
import zlib
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

from galaxy_class import GalaxyClassError
from galaxy_class.batches import FileImages, MemoryImages, make_dataset, read_batches
from galaxy_class.data import open_galaxy10, read_images

# Inflates from 49 kB to 50 MB: big enough to see in memory, small enough for a quick test.
BOMB = zlib.compress(b"\0" * 50_000_000, 9)
GZIP_PER_IMAGE = dict(chunks=(1, 8, 8, 3), compression="gzip")


def images_and_labels(n=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8), np.arange(n, dtype=np.uint8) % 3


def galaxy10(path, n=3, **options):
    """A small, sound Galaxy10-schema file with an objid column; `options` for the images dataset."""
    images, labels = images_and_labels(n)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, **options)
        f["ans"] = labels
        f["objid"] = np.arange(n, dtype=np.int64) + 587722981742084219
    return path


def secret(tmp_path):
    """A local file a hostile .h5 might point at, its bytes valid labels and pixels."""
    path = tmp_path / "secret.txt"
    path.write_bytes(bytes([0, 1, 2]) * 400)
    return path


def refused(path, match):
    """The one-line GalaxyClassError open_galaxy10 raises for `path`, which must name it and match `match`."""
    with pytest.raises(GalaxyClassError, match=match) as error:
        open_galaxy10(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


# --- data from elsewhere ------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["images", "ans", "objid"])
def test_external_storage_is_refused_naming_the_dataset(dataset, tmp_path):
    images, labels = images_and_labels()
    stored = {"images": images, "ans": labels, "objid": np.arange(3, dtype=np.int64)}
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        for name, data in stored.items():
            if name == dataset:  # its bytes are those of secret.txt, whatever the file holds
                f.create_dataset(name, data.shape, data.dtype, external=[(secret(tmp_path), 0, h5py.h5f.UNLIMITED)])
            else:
                f[name] = data
    message = refused(path, "external storage")
    assert message == f"{path}: dataset '{dataset}' stores its data in another file (external storage); refused"


def test_an_external_link_is_refused(tmp_path):
    elsewhere = galaxy10(tmp_path / "elsewhere.h5")
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f["images"] = h5py.ExternalLink(str(elsewhere), "/images")
        f["ans"] = images_and_labels()[1]
    assert refused(path, "external link") == f"{path}: 'images' is a link into another file (external link); refused"


def test_a_soft_link_is_refused(tmp_path):
    path = galaxy10(tmp_path / "f.h5")
    with h5py.File(path, "a") as f:
        f.move("images", "hidden/images")
        f["images"] = h5py.SoftLink("/hidden/images")
    refused(path, "'images' is a link to another name in the file \\(soft link\\); refused")


def test_a_virtual_dataset_is_refused(tmp_path):
    elsewhere = galaxy10(tmp_path / "elsewhere.h5")
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        layout = h5py.VirtualLayout((3, 8, 8, 3), np.uint8)
        layout[:] = h5py.VirtualSource(str(elsewhere), "images", (3, 8, 8, 3))
        f.create_virtual_dataset("images", layout)
        f["ans"] = images_and_labels()[1]
    refused(path, "dataset 'images' takes its data from other datasets.*\\(virtual dataset\\); refused")


def test_links_anywhere_in_the_file_are_refused_even_in_groups_never_read(tmp_path):
    path = galaxy10(tmp_path / "f.h5")
    with h5py.File(path, "a") as f:
        f.create_group("extra/deeper")
        f["extra/deeper/loop"] = f["extra"]  # a cycle of hard links, which is no harm and must not trap the walk
    assert open_galaxy10(path).n == 3
    with h5py.File(path, "a") as f:
        f["extra/deeper/key"] = h5py.ExternalLink(str(secret(tmp_path)), "/")
    refused(path, "'extra/deeper/key' is a link into another file")


# --- what a file only declares ------------------------------------------------------------------


def test_huge_declared_images_are_refused_quickly_without_allocating(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:  # nothing written: a 2 kB file that declares 5.4 GB of pixels
        f.create_dataset("images", (2, 30000, 30000, 3), np.uint8, chunks=(1, 256, 256, 3), compression="gzip")
        f.create_dataset("ans", (2,), np.uint8)
    assert path.stat().st_size < 10_000
    start = time.perf_counter()
    refused(path, r"images of 30000x30000 px; at most 4096x4096 are read")
    assert time.perf_counter() - start < 2


def test_more_images_than_the_bound_are_refused_before_the_labels_are_read(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", (10**11, 69, 69, 3), np.uint8, chunks=(1, 69, 69, 3), compression="gzip")
        f.create_dataset("ans", (10**11,), np.uint8, chunks=(10**6,), compression="gzip")
    refused(path, "'images' declares 100000000000 images; at most 100000000 are read")


def test_labels_that_would_not_fit_in_memory_are_refused(tmp_path, monkeypatch):
    import galaxy_class.data

    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", (10**7, 8, 8, 3), np.uint8, chunks=(1, 8, 8, 3), compression="gzip")
        f.create_dataset("ans", (10**7,), np.uint8, chunks=(10**6,), compression="gzip")
    monkeypatch.setattr(galaxy_class.data, "memory_available", lambda: 10**7, raising=False)
    refused(path, "'ans' declares 10000000 labels, 50.0 MB to read, more than the 10.0 MB of memory available")


def test_chunks_too_big_to_inflate_or_too_many_to_cross_are_refused(tmp_path):
    big = tmp_path / "big.h5"
    with h5py.File(big, "w") as f:  # one 300 MiB chunk: HDF5 would inflate all of it to read one image
        f.create_dataset("images", (100, 1024, 1024, 3), np.uint8, chunks=(100, 1024, 1024, 3), compression="gzip")
        f["ans"] = np.zeros(100, np.uint8)
    refused(big, "dataset 'images' has chunks of 300 MiB; at most 64 MiB are read")
    many = tmp_path / "many.h5"
    with h5py.File(many, "w") as f:  # 200,000 chunks of one label, none written: seconds of HDF5's time
        f.create_dataset("images", (200_000, 8, 8, 3), np.uint8, chunks=(1, 8, 8, 3), compression="gzip")
        f.create_dataset("ans", (200_000,), np.uint8, chunks=(1,), compression="gzip")
    refused(many, r"dataset 'ans' is cut into chunks of \(1,\): reading it crosses 200000 of them, at most 100000")


def test_filters_whose_output_cannot_be_checked_are_refused(tmp_path):
    path = galaxy10(tmp_path / "f.h5", chunks=(1, 8, 8, 3), compression="lzf")
    refused(path, "dataset 'images' is stored with the HDF5 filters lzf; only gzip .* is read")


# --- chunks that inflate to more (or less) than they hold ---------------------------------------


PEAK_MEMORY = """
import sys
from galaxy_class import GalaxyClassError
from galaxy_class.data import open_galaxy10

def peak():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])

open_galaxy10(sys.argv[1])  # what opening any file costs
open("/proc/self/clear_refs", "w").write("5")  # Linux: the peak starts again from here
before = peak()
try:
    open_galaxy10(sys.argv[2])
except GalaxyClassError as e:
    print(e)
print(peak() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak memory as Linux reports it")
def test_a_gzip_bomb_is_refused_on_opening_without_inflating_it(tmp_path, sample_file):
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (1, 69, 69, 3), np.uint8, chunks=(1, 69, 69, 3), compression="gzip")
        images.id.write_direct_chunk((0, 0, 0, 0), BOMB, filter_mask=0)
        f["ans"] = np.zeros(1, np.uint8)
    # In a process of its own: HDF5's buffers are out of tracemalloc's sight. 50 MB before this was checked.
    out = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(sample_file), str(path)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.splitlines()
    assert out[0] == (f"{path}: cannot read its data, truncated or corrupt? "
                      f"(image 0: its chunk inflates to more than the 14283 bytes it holds)")
    assert int(out[1]) < 10_000, f"peak memory grew by {int(out[1]) // 1000} MB"  # kB


@pytest.mark.parametrize("column", ["ans", "objid"])
def test_a_gzip_bomb_in_the_labels_or_a_catalogue_column_is_refused_on_opening(column, tmp_path):
    path = galaxy10(tmp_path / "f.h5")
    with h5py.File(path, "a") as f:
        data = f[column][()]
        del f[column]
        f.create_dataset(column, data=data, chunks=(3,), compression="gzip").id.write_direct_chunk((0,), BOMB)
    what = "'ans'" if column == "ans" else "column 'objid'"
    refused(path, f"{what}: its chunk inflates to more than the {3 * data.itemsize} bytes it holds")


@pytest.mark.parametrize("chunk, why", [
    (BOMB, "its chunk inflates to more than the 192 bytes it holds"),
    (zlib.compress(b"\0" * 100), "its chunk inflates to 100 bytes, not the 192 it holds"),
], ids=["more", "fewer"])
def test_the_streaming_reader_inflates_a_chunk_no_further_than_its_image(chunk, why, tmp_path):
    path = galaxy10(tmp_path / "f.h5", **GZIP_PER_IMAGE)
    g = open_galaxy10(path)
    with h5py.File(path, "a") as f:  # after opening: the middle image, which opening does not read
        f["images"].id.write_direct_chunk((1, 0, 0, 0), chunk)
    tracemalloc.start()
    try:
        with FileImages(g).reader() as read:
            with pytest.raises(GalaxyClassError) as error:
                read(1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value) == f"{path}: image 1 is corrupt ({why})"
    assert peak < 1_000_000, f"{peak} bytes traced"
    with pytest.raises(GalaxyClassError, match="image 1 is corrupt"):
        list(read_batches(FileImages(g), [np.arange(3)]))


def test_a_bomb_in_a_layout_read_through_h5py_is_refused_before_h5py_inflates_it(tmp_path):
    path = galaxy10(tmp_path / "f.h5", n=6, chunks=(2, 8, 8, 3), compression="gzip", shuffle=True)
    g = open_galaxy10(path)
    expected = images_and_labels(6)[0]
    with h5py.File(path, "a") as f:
        f["images"].id.write_direct_chunk((2, 0, 0, 0), BOMB)
    why = f"{path}: image 3 is corrupt (its chunk inflates to more than the 384 bytes it holds)"
    with pytest.raises(GalaxyClassError) as error:
        read_images(g, [0, 3])
    assert str(error.value) == why
    with FileImages(g).reader() as read:
        assert np.array_equal(read(1), expected[1])
        with pytest.raises(GalaxyClassError, match="image 2 is corrupt"):
            read(2)


def test_a_read_error_inside_tf_data_is_recovered_as_one_line(tmp_path):
    from galaxy_class.batches import read_error

    path = galaxy10(tmp_path / "f.h5", **GZIP_PER_IMAGE)
    g = open_galaxy10(path)
    with h5py.File(path, "a") as f:
        f["images"].id.write_direct_chunk((1, 0, 0, 0), BOMB)
    with pytest.raises(Exception) as error:  # tf.data hands the generator's exception on as its own
        list(make_dataset(g, np.arange(3), 2))
    recovered = read_error(error.value)
    assert isinstance(recovered, GalaxyClassError)
    assert str(recovered) == f"{path}: image 1 is corrupt (its chunk inflates to more than the 192 bytes it holds)"
    assert read_error(ValueError("something else")) is None


# --- memory taken by batches of what the file declares ------------------------------------------


class CountingImages(FileImages):
    reads = 0

    @contextmanager
    def reader(self):
        with super().reader() as read:

            def counted(i):
                CountingImages.reads += 1
                return read(i)

            yield counted


def test_batches_that_would_not_fit_in_memory_are_refused_and_read_ahead_is_bounded_in_bytes(tmp_path, monkeypatch):
    import galaxy_class.batches

    g = open_galaxy10(galaxy10(tmp_path / "f.h5", n=200, **GZIP_PER_IMAGE))
    monkeypatch.setattr(galaxy_class.batches, "memory_available", lambda: 10_000)
    with pytest.raises(GalaxyClassError, match=r"f.h5: 100 images of 8x8 px take 19.2 kB, more than the 10.0 kB of "
                                               r"memory available \(one batch; use a smaller batch size\)"):
        next(read_batches(FileImages(g), [np.arange(100)]))
    with pytest.raises(GalaxyClassError, match=r"200 images .* \(holding them in memory; use --cache stream\)"):
        MemoryImages(g, np.arange(200))
    monkeypatch.undo()
    monkeypatch.setattr(galaxy_class.batches, "READ_AHEAD_BYTES", 1)  # as if each batch were huge
    batches = [np.arange(start, start + 10) for start in range(0, 200, 10)]
    CountingImages.reads = 0
    reading = read_batches(CountingImages(g), batches, workers=4)
    next(reading)
    time.sleep(0.5)  # time for any eager read-ahead to happen
    assert CountingImages.reads <= 20, "the batch handed over and one more, not one per worker"
    assert len(list(reading)) == 19


# --- sound files --------------------------------------------------------------------------------


def test_the_sample_opens_as_before_and_the_checks_cost_little(sample_file):
    g = open_galaxy10(sample_file)
    assert (g.n, g.image_shape, g.class_counts().tolist()) == (1536, (69, 69, 3), [1066, 198, 232, 40])
    with h5py.File(sample_file, "r") as f:
        assert np.array_equal(g.labels, f["ans"][()])
        assert np.array_equal(read_images(g, [0, 700, 1535]), f["images"][[0, 700, 1535]])
    start = time.perf_counter()
    for _ in range(10):
        open_galaxy10(sample_file)
    assert (time.perf_counter() - start) / 10 < 0.05  # measured 1.7 ms, 0.7 ms without the checks


@pytest.mark.parametrize("options", [
    {},
    GZIP_PER_IMAGE,
    dict(chunks=(2, 4, 8, 3), compression="gzip", shuffle=True, fletcher32=True),
    dict(chunks=(1, 8, 8, 3), fletcher32=True),
])
def test_sound_files_of_any_layout_open_and_read_as_they_are_stored(options, tmp_path):
    path = galaxy10(tmp_path / "f.h5", n=5, **options)
    with h5py.File(path, "a") as f:  # gzip-compressed columns of any type are checked, not refused
        f.create_dataset("name", data=np.array(["a", "bb", "c", "dd", "e"], dtype=h5py.string_dtype()),
                         chunks=(2,), compression="gzip")
        f.create_dataset("ra", data=np.linspace(0, 360, 5), chunks=(2,), compression="gzip", shuffle=True)
    images, labels = images_and_labels(5)
    g = open_galaxy10(path)
    assert g.n == 5 and np.array_equal(g.labels, labels)
    assert np.array_equal(read_images(g, [4, 0, 2]), images[[4, 0, 2]])
    assert np.array_equal(np.concatenate(list(read_batches(FileImages(g), [np.arange(3), np.arange(3, 5)]))), images)


def test_the_command_line_reports_a_hostile_file_in_one_line(capsys, tmp_path):
    from galaxy_class.cli import main

    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", (2, 30000, 30000, 3), np.uint8, chunks=(1, 256, 256, 3), compression="gzip")
        f["ans"] = np.zeros(2, np.uint8)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: 'images' declares images of 30000x30000 px") and err.count("\n") == 1
