"""Specification of galaxy_class.batches: images held in memory or streamed give the same batches."""

import time

import h5py
import numpy as np
import pytest

from conftest import collect
from galaxy_class import GalaxyClassError
from galaxy_class.batches import (
    WORKERS,
    FileImages,
    MemoryImages,
    _one_deflate_chunk_per_image,
    choose_cache,
    dihedral,
    make_dataset,
    open_images,
    read_batches,
)
from galaxy_class.data import open_galaxy10
from galaxy_class.runs import settings_differences
from galaxy_class.train import train

LAYOUTS = {
    "gzip, one chunk per image (raw chunks inflated in threads)": dict(chunks=(1, 16, 16, 3), compression="gzip"),
    "uncompressed, one chunk per image": dict(chunks=(1, 16, 16, 3)),
    "contiguous": {},
    "gzip with the shuffle filter (read through h5py)": dict(chunks=(1, 16, 16, 3), compression="gzip", shuffle=True),
    "two images per chunk (read through h5py)": dict(chunks=(2, 16, 16, 3), compression="gzip"),
}


def galaxy_file(path, n=150, **options):
    rng = np.random.default_rng(0)
    # Smooth images, so gzip really compresses them, plus noise, so every image and view is distinct.
    ramp = np.linspace(0, 120, 16, dtype=np.uint8)[None, :, None, None]
    images = (ramp + rng.integers(0, 100, (n, 16, 16, 3))).astype(np.uint8).transpose(0, 2, 1, 3).copy()
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, **options)
        f["ans"] = rng.integers(0, 3, n)
    return open_galaxy10(path), images


def test_a_corrupt_chunk_is_named_and_an_unwritten_one_reads_as_h5py_reads_it(tmp_path):
    gzip = LAYOUTS["gzip, one chunk per image (raw chunks inflated in threads)"]
    g, images = galaxy_file(tmp_path / "g.h5", n=4, **gzip)
    with h5py.File(g.path, "a") as f:
        f["images"].id.write_direct_chunk((2, 0, 0, 0), b"not gzip at all")
    with FileImages(g).reader() as read:
        assert np.array_equal(read(1), images[1])
        with pytest.raises(GalaxyClassError, match="g.h5: image 2 is corrupt"):
            read(2)
    sparse = tmp_path / "sparse.h5"
    with h5py.File(sparse, "w") as f:
        f.create_dataset("images", shape=(4, 16, 16, 3), dtype=np.uint8, **gzip)
        f["images"][1] = images[1]  # the other chunks are never written
        f["ans"] = np.arange(4) % 3
    with FileImages(open_galaxy10(sparse)).reader() as read:
        assert np.array_equal(read(1), images[1]) and not read(0).any(), "unwritten chunks hold the fill value"


def test_worker_reads_survive_other_h5py_calls_in_the_process(tmp_path):
    """Worker threads fetch raw chunks while this thread reads another file through h5py, as a catalogue reads
    its id columns: HDF5 is not thread-safe, so both must take the same lock (a lock of our own crashed here)."""
    g, images = galaxy_file(tmp_path / "g.h5", n=600, **LAYOUTS["gzip, one chunk per image (raw chunks inflated in threads)"])
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["ra"] = np.arange(1000.0)
    batches = [np.arange(i, min(i + 16, g.n)) for i in range(0, g.n, 16)]
    read = []
    with h5py.File(tmp_path / "other.h5", "r") as other:
        for batch in read_batches(FileImages(g), batches):
            read.append(batch)
            for k in range(200):
                assert other["ra"][k : k + 3].tolist() == [k, k + 1, k + 2]
    assert np.array_equal(np.concatenate(read), images)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_memory_and_stream_give_the_same_shuffled_augmented_batches(layout, tmp_path):
    g, images = galaxy_file(tmp_path / "f.h5", **LAYOUTS[layout])
    indices = np.arange(7, 143)
    ram = open_images(g, indices, cache="ram")
    assert isinstance(ram, MemoryImages) and isinstance(open_images(g, indices, cache="stream"), FileImages)
    options = dict(shuffle=True, augment=True, seed=3)
    streamed = make_dataset(g, indices, 32, **options)
    held = make_dataset(g, indices, 32, source=ram, **options)
    for epoch in range(2):
        x, y = collect(streamed)
        x_ram, y_ram = collect(held)
        assert np.array_equal(x, x_ram) and np.array_equal(y, y_ram), f"epoch {epoch}"
    # The batches are the file's images, shuffled, each in one of its 8 views.
    order = np.random.default_rng([3, 1]).permutation(indices)
    assert np.array_equal(y, g.labels[order])
    views = {next(k for k in range(8) if np.array_equal(image, dihedral(images[i][None], k)[0]))
             for image, i in zip(x, order)}
    assert views == set(range(8))


def test_the_fast_reader_is_used_only_where_its_layout_is(tmp_path):
    fast = {layout: _one_deflate_chunk_per_image(h5py.File(galaxy_file(tmp_path / f"{i}.h5", n=4, **options)[0]
                                                           .path)["images"])
            for i, (layout, options) in enumerate(LAYOUTS.items())}
    assert list(fast.values()) == [True, True, False, False, False]


def test_memory_holds_only_the_images_asked_for(tmp_path):
    g, images = galaxy_file(tmp_path / "f.h5", chunks=(1, 16, 16, 3), compression="gzip")
    ram = MemoryImages(g, [9, 3, 3, 40])
    assert ram.images.shape == (3, 16, 16, 3) and np.array_equal(ram.images, images[[3, 9, 40]])
    with ram.reader() as read:
        assert np.array_equal(read(40), images[40])
        with pytest.raises(GalaxyClassError, match="image 4 was not read into memory"):
            read(4)
    with pytest.raises(GalaxyClassError, match="index 150 is out of range"):
        MemoryImages(g, [150])


def test_auto_holds_images_in_memory_when_they_fill_at_most_half_of_it():
    gb = 10**9
    assert choose_cache("auto", 3 * gb, 12 * gb)[0] == "ram"
    assert choose_cache("auto", 6 * gb, 12 * gb)[0] == "ram"
    mode, why = choose_cache("auto", 7 * gb, 12 * gb)
    assert mode == "stream" and why == "7.00 GB of images exceed 50% of the 12.0 GB of memory available"
    assert choose_cache("auto", 1, None) == ("stream", "0.00 GB of images, free memory unknown")
    assert choose_cache("ram", 100 * gb, 1 * gb)[0] == "ram", "asked for is asked for"
    assert choose_cache("stream", 1, 100 * gb)[0] == "stream"
    with pytest.raises(GalaxyClassError, match="unknown cache mode 'disk': choose one of auto, ram, stream"):
        choose_cache("disk", 1, 1)


def test_open_images_says_which_mode_and_why(tmp_path, capsys):
    g, _ = galaxy_file(tmp_path / "f.h5")
    assert isinstance(open_images(g, range(10), "auto", verbose=True), MemoryImages)  # 7.7 kB fit anywhere
    assert capsys.readouterr().out.startswith("Images: held in memory (0.00 GB of images fit in 50% of the ")
    open_images(g, range(10), "stream", verbose=True)
    assert capsys.readouterr().out == "Images: streamed from the file (0.00 GB of images, as asked).\n"


class CountingImages(FileImages):
    """FileImages that counts the images read."""

    reads = 0

    def reader(self):
        outer = super().reader()
        read = outer.__enter__()

        def counted(i):
            CountingImages.reads += 1
            return read(i)

        class Context:
            def __enter__(self):
                return counted

            def __exit__(self, *exc):
                return outer.__exit__(*exc)

        return Context()


def test_only_a_few_batches_are_read_ahead(tmp_path):
    g, _ = galaxy_file(tmp_path / "f.h5", n=1000, chunks=(1, 16, 16, 3), compression="gzip")
    source = CountingImages(g)
    iterator = iter(make_dataset(g, np.arange(1000), 10, shuffle=True, augment=True, source=source))
    next(iterator)
    time.sleep(1)  # time for any eager read-ahead to happen
    # Batches in flight: the workers' and one more, tf.data's prefetch of 2, the one being handed over.
    assert 10 <= CountingImages.reads <= 10 * (WORKERS + 5), CountingImages.reads
    assert len(list(iterator)) == 99


def test_a_bad_cache_mode_is_refused_before_anything_is_written(tmp_path, tiny_config):
    with pytest.raises(GalaxyClassError, match="unknown cache mode 'disk'"):
        train(tiny_config.replace(cache="disk"), tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_the_cache_mode_is_no_settings_difference(tiny_run, tiny_config, capsys):
    assert settings_differences(tiny_config, tiny_config.replace(cache="stream")) == []
    train(tiny_config.replace(cache="stream"), tiny_run, verbose=1)
    assert "loaded, not retrained" in capsys.readouterr().out


def test_the_command_line_refuses_a_bad_cache_mode(capsys):
    from galaxy_class.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", "squeezenet", "--data", "sample", "--out", "x", "--cache", "disk"])
    assert exit_.value.code == 2
    assert "argument --cache: invalid choice: 'disk'" in capsys.readouterr().err
