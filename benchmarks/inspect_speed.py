"""Speed and memory of the data-integrity check (integrity.check) on a file shaped like Galaxy10 DECaLS.

    python benchmarks/inspect_speed.py            # 17,736 images: writes a ~2.7 GB temporary file
    python benchmarks/inspect_speed.py --n 3000   # quick run

One generated file of n distinct 256x256x3 uint8 galaxy-like images, one gzip chunk per image (compressing like
the real ones, ~0.77), with ra/dec columns and what Galaxy10 DECaLS is reported to hold: 59 pairs of rows at the
same position whose images are copies (some flipped or rotated, 5 labelled otherwise), 67 pairs 1-10″ apart and
3 black images. In a fresh process, with the file in the page cache: one pass reading the images alone (the
floor), then integrity.check, then the grouped split it makes. Prints seconds, images/s and peak resident memory.
The file is deleted.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import decals_like_images, peak_rss_gb  # noqa: E402 (the same generated galaxies)

DISTINCT = 512  # generated galaxies; each image is one of them shifted sideways by its own amount, so all differ
COPIES, NEAR, BLACK = 59, 67, (11492, 12659, 15422)
RELABELLED = 5  # copies whose label differs from their original's


def plant(n, rng):
    """(copies: pairs (original, copy, dihedral k), near: pairs (a, b, arcsec), black rows) for a file of n."""
    black = [i for i in BLACK if i < n] or [n - 1]
    rows = rng.permutation(np.setdiff1d(np.arange(n), black))
    copies = [(a, b, k) for (a, b), k in zip(rows[:2 * COPIES].reshape(-1, 2), rng.integers(0, 8, COPIES))]
    near = [(a, b, s) for (a, b), s in zip(rows[2 * COPIES:2 * (COPIES + NEAR)].reshape(-1, 2),
                                         rng.uniform(1.5, 10, NEAR))]
    return copies, near, black


def write_file(path, n, seed=0):
    """The DECaLS-like file with planted copies, near pairs and black images; returns what was planted."""
    rng = np.random.default_rng(seed)
    copies, near, black = plant(n, rng)
    bases = decals_like_images(DISTINCT, seed)
    copy_of = {b: (a, k) for a, b, k in copies}

    def image(i):
        return np.roll(bases[i % DISTINCT], i // DISTINCT + 1, axis=1)

    def chunk(i):
        if i in black:
            pixels = np.zeros((256, 256, 3), np.uint8)
        elif i in copy_of:
            original, k = copy_of[i]
            pixels = np.rot90(image(original), k % 4)
            pixels = pixels[:, ::-1] if k >= 4 else pixels
        else:
            pixels = image(i)
        return zlib.compress(np.ascontiguousarray(pixels).tobytes(), 4)  # h5py's gzip level

    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    for a, b, _ in copies:
        ra[b], dec[b] = ra[a], dec[a]
    for a, b, arcsec in near:
        ra[b], dec[b] = ra[a], dec[a] + arcsec / 3600
    with h5py.File(path, "w") as f, ThreadPoolExecutor() as pool:
        images = f.create_dataset("images", (n, 256, 256, 3), np.uint8, chunks=(1, 256, 256, 3), compression="gzip")
        for i, raw in enumerate(pool.map(chunk, range(n))):  # HDF5's deflate chunks, written as they are
            images.id.write_direct_chunk((i, 0, 0, 0), raw)
        labels = rng.integers(0, 10, n)
        for a, b, _ in copies + near:
            labels[b] = labels[a]
        for a, b, _ in copies[:RELABELLED]:
            labels[b] = (labels[a] + 1) % 10
        f["ans"] = labels.astype(np.uint8)
        f["ra"], f["dec"] = ra, dec
    return {"copies": len(copies), "near": len(near), "black": black}


def child(path):
    """Time reading, checking and splitting in this (fresh) process; print the results as JSON."""
    from galaxy_class.batches import FileImages, read_batches
    from galaxy_class.data import open_galaxy10, split_indices
    from galaxy_class.integrity import check

    g = open_galaxy10(Path(path))
    start = time.perf_counter()
    for _ in read_batches(FileImages(g), np.array_split(np.arange(g.n), -(-g.n // 64))):
        pass
    read = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    report = check(g)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    split_indices(g.labels, 0, groups=report.group_ids, leave_out=report.left_out)
    split = time.perf_counter() - start
    print(json.dumps({"images": g.n, "read": read, "check": seconds, "check_cpu": cpu, "split": split,
                      "peak_rss_gb": peak_rss_gb(), "summary": report.summary()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=17736, help="images in the generated file (Galaxy10 DECaLS: 17,736)")
    parser.add_argument("--dir", type=Path, help="where to write the temporary file (default: the system's)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "decals_like.h5"
        start = time.perf_counter()
        planted = write_file(path, args.n)
        print(f"{args.n:,} x 256x256x3 uint8, {path.stat().st_size / 1e9:.2f} GB on disk, written in "
              f"{time.perf_counter() - start:.0f} s; planted {planted['copies']} copies at the same position, "
              f"{planted['near']} pairs 1.5-10″ apart, black images {planted['black']}", flush=True)
        with open(path, "rb") as f:  # page cache warm, as for a file just downloaded
            while f.read(1 << 24):
                pass
        out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                             check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    n = result["images"]
    print("\n".join(result["summary"]))
    print("\n| step | seconds | images/s |\n|---|---:|---:|")
    print(f"| reading the images alone (inflating each chunk) | {result['read']:.1f} | {n / result['read']:,.0f} |")
    print(f"| integrity.check (fingerprints, positions, groups) | {result['check']:.1f} | "
          f"{n / result['check']:,.0f} |")
    print(f"| grouped split (StratifiedGroupKFold) | {result['split']:.1f} | |")
    print(f"check used {result['check_cpu']:.1f} CPU-seconds; peak resident memory {result['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
