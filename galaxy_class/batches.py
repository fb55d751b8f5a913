"""Batches of uint8 images for training and evaluation: read from the file as needed, or held in memory.

Both sources give the same batches for the same seed: the same order, the same flips and rotations.
Worker threads read, decompress and transform images side by side, a bounded number of batches ahead:
only fetching a raw chunk from the file is serialised, while zlib and numpy's copies release the GIL.
"""

from __future__ import annotations

import collections
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import h5py
import numpy as np
from h5py._objects import phil as H5PY_LOCK
from tqdm import tqdm

from galaxy_class import jitter
from galaxy_class.data import (
    BadChunk,
    Galaxy10File,
    _checked_indices,
    bytes_text,
    image_reader,
    inflate,
    memory_available,
)
from galaxy_class.errors import GalaxyClassError

CACHE_MODES = ("auto", "ram", "stream")
# "auto" holds the images in memory when they take at most this share of the memory available.
RAM_SHARE = 0.5
# Batches read ahead take at most this much memory (beyond the one handed over): a file may declare images of
# up to 4096 px a side, 48 MiB each, so a batch of them can take gigabytes.
READ_AHEAD_BYTES = 2**30


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity where the system has one (as os.process_cpu_count in 3.13)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


WORKERS = max(2, min(8, usable_cpus()))


def dihedral(images, k: int):
    """The k-th (0..7) of the 8 rotations/flips of a batch of NHWC images, numpy or tf.

    k % 4 quarter turns counter-clockwise (as np.rot90), then a left-right flip if k >= 4; k=0 is the identity.
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform k={k}: must be 0..7")
    if isinstance(images, np.ndarray):
        out = np.rot90(images, k % 4, axes=(1, 2))
        # A copy: views with negative strides trip up some consumers (e.g. tf.convert_to_tensor).
        return np.ascontiguousarray(out[:, :, ::-1] if k >= 4 else out)
    import tensorflow as tf

    out = tf.image.rot90(images, k % 4)
    return tf.image.flip_left_right(out) if k >= 4 else out


def _place(out: np.ndarray, image: np.ndarray, k: int) -> None:
    """out[...] = `dihedral` k of one (H, W, 3) image."""
    view = np.rot90(image, k % 4)
    view = view[:, ::-1] if k >= 4 else view
    if view.strides[1] == image.strides[1]:  # rows stay rows (k = 0, 6): one fast copy
        out[...] = view
        return
    # Colour plane by plane: numpy then copies runs of 256 pixels, not of 3 bytes (measured ~2x faster),
    # and releases the GIL, so worker threads transform side by side.
    for c in range(image.shape[-1]):
        out[..., c] = view[..., c]


class FileImages:
    """Images read from the file when asked for; only the batches in flight are in memory."""

    def __init__(self, g: Galaxy10File):
        self.g = g

    @contextmanager
    def reader(self):
        """A function image index -> (H, W, 3) uint8 that any thread may call, while the file is open."""
        with h5py.File(self.g.path, "r") as f:
            images = f["images"]
            if _one_deflate_chunk_per_image(images):
                shape, deflated = images.shape[1:], images.compression == "gzip"
                size = int(np.prod(shape))

                def read(i):
                    # Only fetching the raw chunk is serialised; inflating it, most of the work, runs in parallel.
                    # The lock is h5py's own, which its high-level calls take: HDF5 is not thread-safe, and a lock
                    # of our own let a read here meet another thread's h5py call on any file and crash.
                    try:
                        with H5PY_LOCK:
                            mask, raw = images.id.read_direct_chunk((int(i), 0, 0, 0))
                    except RuntimeError:  # a chunk never written: h5py reads it as the fill value
                        return images[int(i)]
                    try:
                        # Inflated no further than the image's size: a few KB can inflate to gigabytes.
                        data = inflate(raw, size) if deflated and not mask & 1 else raw
                        if len(data) != size:
                            raise BadChunk(f"its chunk holds {len(data)} bytes, not {size}")
                    except BadChunk as e:
                        raise GalaxyClassError(f"{self.g.path}: image {i} is corrupt ({e})") from None
                    return np.frombuffer(data, np.uint8).reshape(shape)

                yield read
            else:
                yield image_reader(self.g.path, images)


def _one_deflate_chunk_per_image(images: h5py.Dataset) -> bool:
    """Whether each image is one chunk, stored raw or gzip-compressed with no other filter (Galaxy10's layout)."""
    if images.chunks != (1, *images.shape[1:]):
        return False
    plist = images.id.get_create_plist()
    return all(plist.get_filter(i)[0] == h5py.h5z.FILTER_DEFLATE for i in range(plist.get_nfilters()))


class MemoryImages:
    """The images of `indices`, read once in file order and held as one uint8 array."""

    def __init__(self, g: Galaxy10File, indices, progress: bool = False):
        self.g = g
        self.indices = np.unique(_checked_indices(g, indices))
        _check_fits(g, len(self.indices), "holding them in memory; use --cache stream")
        self.images = np.empty((len(self.indices), *g.image_shape), np.uint8)
        self.position = {int(i): p for p, i in enumerate(self.indices)}
        starts = range(0, len(self.indices), 64)
        # Shown only when reading takes a while (Galaxy10 DECaLS: tens of seconds), not for a small file.
        with tqdm(total=len(self.indices), unit="image", disable=not progress, delay=2,
                  desc=f"Reading {g.path.name} into memory") as bar:
            blocks = read_batches(FileImages(g), [self.indices[s : s + 64] for s in starts], None)
            for start, block in zip(starts, blocks):
                self.images[start : start + len(block)] = block
                bar.update(len(block))

    @contextmanager
    def reader(self):
        def read(i):
            if int(i) not in self.position:
                raise GalaxyClassError(f"{self.g.path}: image {i} was not read into memory")
            return self.images[self.position[int(i)]]

        yield read


def image_bytes(g: Galaxy10File, n: int) -> int:
    return n * int(np.prod(g.image_shape))


def _check_fits(g: Galaxy10File, n: int, what: str) -> None:
    """Refuse `n` of the file's images at once where they would not fit in the memory available."""
    needed, available = image_bytes(g, n), memory_available()
    if available is not None and needed > available:
        height, width = g.image_shape[:2]
        raise GalaxyClassError(
            f"{g.path}: {n} images of {height}x{width} px take {bytes_text(needed)}, more than the "
            f"{bytes_text(available)} of memory available ({what})"
        )


def check_cache(mode: str) -> None:
    if mode not in CACHE_MODES:
        raise GalaxyClassError(f"unknown cache mode {mode!r}: choose one of {', '.join(CACHE_MODES)}")


def choose_cache(mode: str, needed: int, available: int | None) -> tuple[str, str]:
    """("ram" or "stream", why) for images of `needed` bytes with `available` bytes of memory free."""
    check_cache(mode)
    size = f"{needed / 1e9:.2f} GB of images"
    if mode != "auto":
        return mode, f"{size}, as asked"
    if available is None:
        return "stream", f"{size}, free memory unknown"
    verdict = "ram" if needed <= RAM_SHARE * available else "stream"
    relation = "fit in" if verdict == "ram" else "exceed"
    return verdict, f"{size} {relation} {RAM_SHARE:.0%} of the {available / 1e9:.1f} GB of memory available"


def open_images(g: Galaxy10File, indices, cache: str = "auto", verbose: bool = False):
    """The images of `indices` as a source for make_dataset: in memory or read from the file, as `cache` says
    ("auto" chooses from their size and the free memory); prints one line saying which with `verbose`."""
    indices = np.unique(_checked_indices(g, indices))
    mode, why = choose_cache(cache, image_bytes(g, len(indices)), memory_available() if cache == "auto" else None)
    if verbose:
        print(f"Images: {'held in memory' if mode == 'ram' else 'streamed from the file'} ({why}).", flush=True)
    return MemoryImages(g, indices, progress=verbose) if mode == "ram" else FileImages(g)


def read_batches(source, batches, views=None, workers: int = WORKERS):
    """The images of each index batch, with `views[b][j]` the dihedral view of image j of batch b (None: as
    stored); worker threads fill them in order, at most workers + 1 batches ahead, and at most READ_AHEAD_BYTES."""
    largest = max(map(len, batches), default=0)
    _check_fits(source.g, largest, "one batch; use a smaller batch size")
    ahead = max(1, min(workers, READ_AHEAD_BYTES // max(1, image_bytes(source.g, largest))))
    with source.reader() as read, ThreadPoolExecutor(workers) as pool:

        def fill(b):
            batch = batches[b]
            out = np.empty((len(batch), *source.g.image_shape), np.uint8)
            for j, (i, k) in enumerate(zip(batch, np.zeros(len(batch), int) if views is None else views[b])):
                _place(out[j], read(i), k)
            return out

        pending = collections.deque()
        for b in range(len(batches)):
            pending.append(pool.submit(fill, b))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_error(error: Exception) -> GalaxyClassError | None:
    """The GalaxyClassError a read raised inside make_dataset's batches, from the TensorFlow error that carries it
    to the caller (tf.data reports a generator's exception as its own, traceback included); None if none did."""
    _, found, rest = str(getattr(error, "message", "")).partition(f"{GalaxyClassError.__name__}: ")
    return GalaxyClassError(rest.splitlines()[0]) if found and rest else None


def make_dataset(
    g: Galaxy10File,
    indices,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
    first_epoch: int = 0,
    source=None,
    targets=None,
    sample_weights=None,
    shift_zoom: float = 0.0,
    colour: float = 0.0,
):
    """Batches of (uint8 images (b, H, W, 3), int32 labels (b,)) from `source` (open_images; default: streamed
    from the file); with `targets` (an array (images in the file, K) of float32), each batch's rows of it in
    place of the labels (soft targets, e.g. a teacher's probabilities); with `sample_weights` (an array (images
    in the file,) of float32), each batch's rows of it as a third element, the loss weight of each image.

    With shuffle, pass e over the data is permutation (seed, first_epoch + e); with augment, each image gets
    one of the 8 dihedral transforms at random, also seeded by it. A resumed run passes its epochs done as
    first_epoch. With `shift_zoom` or `colour`, each image is also moved, zoomed and rescaled at random
    (jitter.py), drawn from the same generator. Pixels stay uint8: scaling and resizing happen inside the model.
    """
    import tensorflow as tf

    indices = _checked_indices(g, indices)
    if augment and g.image_shape[0] != g.image_shape[1]:
        height, width = g.image_shape[:2]
        raise GalaxyClassError(f"{g.path}: images are {height}x{width}; rotations need square images")
    source = source or FileImages(g)
    jittered = bool(shift_zoom or colour)
    epochs = itertools.count(first_epoch)  # tf.data calls the generator afresh for every pass over the data

    def generate():
        rng = np.random.default_rng([seed, next(epochs)])
        order = rng.permutation(indices) if shuffle else indices
        stop = len(order) - len(order) % batch_size if drop_remainder else len(order)
        batches = [order[start : start + batch_size] for start in range(0, stop, batch_size)]
        views = [rng.integers(8, size=len(batch)) for batch in batches] if augment else None
        jitters = [jitter.draw(rng, len(batch), shift_zoom, colour) for batch in batches] if jittered else None
        for b, (batch, images) in enumerate(zip(batches, read_batches(source, batches, views))):
            second = g.labels[batch] if targets is None else targets[batch]
            weights = () if sample_weights is None else (sample_weights[batch],)
            yield (images, second, *weights, jitters[b]) if jittered else (images, second, *weights)

    size = batch_size if drop_remainder else None
    second = (tf.TensorSpec((size,), tf.int32) if targets is None
              else tf.TensorSpec((size, targets.shape[1]), tf.float32))
    signature = (tf.TensorSpec((size, *g.image_shape), tf.uint8), second)
    if sample_weights is not None:
        signature += (tf.TensorSpec((size,), tf.float32),)
    if jittered:
        signature += (tf.TensorSpec((size, jitter.PARAMETERS), tf.float32),)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if jittered:
        dataset = dataset.map(lambda images, *rest: (jitter.apply(images, rest[-1]), *rest[:-1]))
    # A known length lets Keras show progress and size its epochs from the first one.
    n_batches = len(indices) // batch_size if drop_remainder else -(-len(indices) // batch_size)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(n_batches))
    # A fixed depth, not AUTOTUNE: memory stays a few batches whatever the machine.
    return dataset.prefetch(2)
