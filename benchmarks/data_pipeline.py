"""Input pipeline speed and memory on files shaped like Galaxy10 DECaLS: each input mode, side by side.

    python benchmarks/data_pipeline.py            # 17,736 images: writes ~6 GB of temporary files
    python benchmarks/data_pipeline.py --n 3000   # quick run

Two generated files of n 256x256x3 uint8 images, one chunk per image: gzip-compressed like the real
Galaxy10 DECaLS file (the generator's images compress about as well as the real ones, ~0.77) and
uncompressed. On each, images/s of one shuffled pass (batch 64), no model, data only:
  - before: the previous pipeline, one h5py read at a time, flips and rotations in a tf.data map;
  - stream: galaxy_class.batches reading from the file (raw chunks inflated in worker threads);
  - ram: the same batches from the images read once into memory (reading them is timed apart).
Then peak resident memory of each mode, each in a fresh process, on the compressed file. Files are deleted.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
DISTINCT = 512  # distinct images; the rest repeat them (each chunk is still read and inflated on its own)


def decals_like_images(n, seed=0):
    """n galaxy-like 256x256x3 uint8 images: a noisy sky and one elliptical blob with a Sersic-like profile."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256] - 127.5
    out = np.empty((n, 256, 256, 3), np.uint8)
    for i in range(n):
        angle, axis_ratio, radius = rng.uniform(0, np.pi), rng.uniform(0.3, 1), rng.uniform(4, 30)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = (yy * np.cos(angle) - xx * np.sin(angle)) / axis_ratio
        profile = rng.uniform(60, 200) * np.exp(-3 * (np.hypot(u, v) / radius) ** 0.5)
        # Sky noise of sigma 16 makes gzip shrink the images to ~0.77, as it does the real DECaLS ones.
        galaxy = profile[..., None] * rng.uniform(0.7, 1.2, 3)
        image = np.array([40, 45, 50]) + galaxy + rng.normal(0, 16, (256, 256, 3))
        out[i] = np.clip(image, 0, 255)
    return out


def write_decals_like(path, n, compressed):
    """A DECaLS-shaped Galaxy10 file, one chunk per image, gzip level 4 (h5py's default) or raw; returns
    the compressed size over the raw size."""
    images = decals_like_images(min(n, DISTINCT))
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        chunks = list(pool.map(lambda im: zlib.compress(im.tobytes(), 4) if compressed else im.tobytes(), images))
    with h5py.File(path, "w") as f:
        options = {"compression": "gzip"} if compressed else {}
        dset = f.create_dataset("images", (n, 256, 256, 3), np.uint8, chunks=(1, 256, 256, 3), **options)
        for i in range(n):  # the chunks as HDF5's deflate filter writes them, without compressing each again
            dset.id.write_direct_chunk((i, 0, 0, 0), chunks[i % len(chunks)])
        f["ans"] = np.random.default_rng(0).integers(0, 10, n).astype(np.uint8)
    return sum(map(len, chunks)) / images.nbytes


def before_dataset(g, indices, batch_size, augment, seed=0):
    """The pipeline as it was before batches.py: one h5py read at a time, augmentation by tf ops."""
    import tensorflow as tf

    from galaxy_class.data import _read

    def generate():
        rng = np.random.default_rng([seed, 0])
        order = rng.permutation(indices)
        with h5py.File(g.path, "r") as f:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                yield _read(f["images"], batch), g.labels[batch], rng.integers(2**31, size=2)

    def random_dihedral(images, aug_seed):
        from galaxy_class.batches import dihedral

        k = tf.random.stateless_uniform([tf.shape(images)[0]], aug_seed, maxval=8, dtype=tf.int32)
        groups = tf.dynamic_partition(images, k, 8)
        positions = tf.dynamic_partition(tf.range(tf.shape(images)[0]), k, 8)
        return tf.dynamic_stitch(positions, [dihedral(group, j) for j, group in enumerate(groups)])

    dataset = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec((None, *g.image_shape), tf.uint8), tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((2,), tf.int64)))
    dataset = dataset.map(lambda x, y, s: (random_dihedral(x, s) if augment else x, y),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def one_pass(path, mode, batch_size, augment):
    """(images, seconds to read them into memory (ram only), seconds of one shuffled pass, CPU seconds of
    this process during it)."""
    from galaxy_class.batches import make_dataset, open_images
    from galaxy_class.data import open_galaxy10

    g = open_galaxy10(Path(path))
    indices = np.arange(g.n)
    load = 0.0
    if mode == "before":
        dataset = before_dataset(g, indices, batch_size, augment)
    else:
        start = time.perf_counter()
        source = open_images(g, indices, cache=mode)
        load = time.perf_counter() - start
        dataset = make_dataset(g, indices, batch_size, shuffle=True, augment=augment, source=source)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in dataset:
        pass
    return g.n, load, time.perf_counter() - start, time.process_time() - cpu


def child(mode, path, batch_size):
    """One shuffled, augmented pass in this (fresh) process; prints its timings and peak RSS as JSON."""
    import tensorflow  # noqa: F401 (every mode pays for TensorFlow, as a training script does)

    result = {}
    if mode != "baseline":
        n, load, seconds, _ = one_pass(path, mode, batch_size, augment=True)
        result = {"images": n, "load": load, "seconds": seconds}
    result["peak_rss_gb"] = peak_rss_gb()
    print(json.dumps(result))


def peak_rss_gb():
    """Peak resident memory of this process since it started."""
    # Not ru_maxrss alone: on Linux a child inherits its parent's peak across fork + exec, so it would
    # report this benchmark's own memory. VmHWM counts only the process's own pages.
    if Path("/proc/self/status").exists():
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(status["VmHWM"].split()[0]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e9  # bytes on macOS


def measure(mode, path, batch_size):
    command = [sys.executable, __file__, "--child", mode, "--data", str(path), "--batch-size", str(batch_size)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=17736, help="images in each generated file (Galaxy10 DECaLS: 17,736)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dir", type=Path, help="where to write the temporary files (default: the system's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.data, args.batch_size)

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        files = {}
        for name, compressed in (("gzip", True), ("uncompressed", False)):
            path = Path(folder) / f"decals_like_{name}.h5"
            start = time.perf_counter()
            ratio = write_decals_like(path, args.n, compressed)
            files[name] = path
            print(f"{name}: {args.n:,} x 256x256x3 uint8, {path.stat().st_size / 1e9:.2f} GB on disk "
                  f"(compressed/raw {ratio:.2f}), written in {time.perf_counter() - start:.0f} s", flush=True)
        for path in files.values():  # page cache warm, as in training after the first epoch
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass

        print(f"\nImages/s of one shuffled pass, batch {args.batch_size}, {os.cpu_count()} CPUs; in brackets, images "
              f"per CPU-second used (what other jobs on the machine do not change); ram: after reading the "
              f"images into memory, timed in its own column")
        print("| file | mode | no augmentation | flips + rotations | reading into memory |")
        print("|---|---|---:|---:|---:|")
        for name, path in files.items():
            for mode in ("before", "stream", "ram"):
                cells = []
                for augment in (False, True):
                    n, load, seconds, cpu = one_pass(path, mode, args.batch_size, augment)
                    cells.append(f"{n / seconds:,.0f} ({n / cpu:,.0f})")
                reading = f"{n / load:,.0f} images/s" if mode == "ram" else ""
                print(f"| {name} | {mode} | {cells[0]} | {cells[1]} | {reading} |", flush=True)

        print("\nPeak resident memory, each mode in a fresh process, one shuffled augmented pass over the gzip file")
        base = measure("baseline", files["gzip"], args.batch_size)["peak_rss_gb"]
        print("| mode | peak RSS | images/s |\n|---|---:|---:|")
        print(f"| TensorFlow imported, nothing else | {base:.2f} GB | |")
        for mode in ("before", "stream", "ram"):
            result = measure(mode, files["gzip"], args.batch_size)
            print(f"| {mode} | {result['peak_rss_gb']:.2f} GB | {result['images'] / result['seconds']:,.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
