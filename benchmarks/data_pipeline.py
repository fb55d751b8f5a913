"""Streaming the HDF5 file with tf.data versus loading the whole array into RAM: images/s and peak memory.

    python benchmarks/data_pipeline.py                  # full run: writes a ~3.5 GB temporary file
    python benchmarks/data_pipeline.py --decals-n 2000  # quick run

1. Throughput on a real file (default the shared dev file): batches delivered per second by
   make_dataset (shuffled, with and without augmentation) and by the old notebooks' way (the whole
   `images` array read and converted to float, then shuffled numpy batches). No model: data only.
2. Peak resident memory of each approach, each in its own process, on a generated file shaped like
   Galaxy10 DECaLS (17,736 x 256x256x3 uint8), deleted afterwards.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
DEV_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz1_sdss_dev.h5"
# The old notebooks' float conversion (float64, what `images / 255` gives) and a thriftier float32 one.
CONVERSIONS = {
    "float64": "x = images / 255.0",
    "float32": "x = images.astype(np.float32); x /= 255",
}


def stream_epochs(path, batch_size, augment, epochs=3):
    """Seconds per epoch of a shuffled make_dataset pass over every image of the file."""
    from galaxy_class.data import make_dataset, open_galaxy10

    g = open_galaxy10(Path(path))
    dataset = make_dataset(g, np.arange(g.n), batch_size, shuffle=True, augment=augment)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _ in dataset:
            pass
        seconds.append(time.perf_counter() - start)
    return g.n, seconds


def in_ram_epochs(path, batch_size, dtype, n=None, epochs=3):
    """Seconds to load and convert the array, then per shuffled epoch of numpy batches."""
    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        images, labels = f["images"][:n], f["ans"][:n]
    x = images / 255.0 if dtype == "float64" else images.astype(np.float32)
    if dtype == "float32":
        x /= 255
    load = time.perf_counter() - start
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch_size):
            batch = order[i : i + batch_size]
            _ = x[batch], labels[batch]
        seconds.append(time.perf_counter() - start)
    return len(x), load, seconds


def child(mode, path, batch_size, n):
    """Run one approach in this (fresh) process and print its peak RSS and timings as JSON."""
    import tensorflow  # noqa: F401  every approach pays for TensorFlow, as a training script does

    result = {}
    if mode == "stream":
        count, seconds = stream_epochs(path, batch_size, augment=True, epochs=1)
        result = {"images": count, "seconds": seconds[0]}
    elif mode == "uint8":
        with h5py.File(path, "r") as f:
            result = {"images": len(f["images"][:n])}
    elif mode in CONVERSIONS:
        count, load, _ = in_ram_epochs(path, batch_size, mode, n=n, epochs=0)
        result = {"images": count, "seconds": load}
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


def measure(mode, path, batch_size, n=None):
    command = [sys.executable, __file__, "--child", mode, "--data", str(path), "--batch-size", str(batch_size)]
    out = subprocess.run(command + (["--n", str(n)] if n else []), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_decals_like(path, n):
    """n random-ish 256x256x3 uint8 images with labels 0..9, one uncompressed chunk per image."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (256, 256, 256, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (n, 256, 256, 3), np.uint8, chunks=(1, 256, 256, 3))
        for start in range(0, n, len(block)):
            stop = min(start + len(block), n)
            images[start:stop] = block[: stop - start] ^ np.uint8(start // len(block))
        f.create_dataset("ans", data=rng.integers(0, 10, n, dtype=np.uint8))


def throughput_table(path, batch_size):
    rows = []
    n, seconds = stream_epochs(path, batch_size, augment=False)
    rows.append(("make_dataset, shuffled", n / seconds[0], n / min(seconds[1:])))
    n, seconds = stream_epochs(path, batch_size, augment=True)
    rows.append(("make_dataset, shuffled + dihedral augmentation", n / seconds[0], n / min(seconds[1:])))
    for dtype, code in CONVERSIONS.items():
        n, load, seconds = in_ram_epochs(path, batch_size, dtype)
        rows.append((f"in RAM, {code}", n / (load + seconds[0]), n / min(seconds[1:])))
    print(f"Throughput on {path} ({n} images, batch {batch_size}, {os.cpu_count()} CPUs), images/s")
    print(f"  {'approach':<52} {'1st epoch':>10} {'later (best of 2)':>18}")
    for name, first, second in rows:
        print(f"  {name:<52} {first:>10,.0f} {second:>18,.0f}")
    print("  (1st epoch of the in-RAM rows includes reading the file and converting to float)")


def memory_table(n, batch_size, fraction):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "decals_like.h5"
        start = time.perf_counter()
        write_decals_like(path, n)
        print(f"\nPeak resident memory, each approach in a fresh process, on a generated DECaLS-shaped file")
        print(
            f"({n} x 256x256x3 uint8, {path.stat().st_size / 1e9:.2f} GB uncompressed, one chunk per image; "
            f"written in {time.perf_counter() - start:.0f} s)"
        )
        base = measure("baseline", path, batch_size)["peak_rss_gb"]
        stream = measure("stream", path, batch_size)
        uint8 = measure("uint8", path, batch_size)["peak_rss_gb"]
        print(f"  {'TensorFlow imported, nothing else':<60} {base:6.2f} GB")
        print(
            f"  {'make_dataset, one shuffled + augmented epoch, batch ' + str(batch_size):<60} "
            f"{stream['peak_rss_gb']:6.2f} GB   ({stream['images'] / stream['seconds']:,.0f} images/s)"
        )
        print(f"  {'in RAM, uint8 array loaded (no conversion)':<60} {uint8:6.2f} GB")
        part = max(1, round(n * fraction))
        for dtype, code in CONVERSIONS.items():
            peak = measure(dtype, path, batch_size, part)["peak_rss_gb"]
            whole = base + (peak - base) * n / part  # the arrays grow linearly with the image count
            print(
                f"  {'in RAM, ' + code:<60} {whole:6.2f} GB   extrapolated from {peak:.2f} GB "
                f"measured on {part} images"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEV_FILE, help="file for the throughput table")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decals-n", type=int, default=17736, help="images in the generated DECaLS-shaped file")
    parser.add_argument(
        "--ram-fraction", type=float, default=0.25, help="share of the images the float in-RAM runs really load"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.data, args.batch_size, args.n)
    throughput_table(args.data, args.batch_size)
    memory_table(args.decals_n, args.batch_size, args.ram_fraction)


if __name__ == "__main__":
    main()
