"""Catalogue speed and memory: one image at a time (the old `predict`) against batched Keras and batched int8 TFLite.

    python benchmarks/catalogue.py RUN_DIR [--data ../shared/data/gz1_sdss_dev.h5] [--decals 4000]

RUN_DIR is a trained run (its int8 export is made if missing). Each way runs in its own process, so its peak
RSS is its own; the table gives galaxies/s, the ratio to one at a time, and peak RSS, on the dev file and
on a generated file shaped like Galaxy10 DECaLS (256x256x3, one gzip chunk per image) of --decals images
and of four times fewer, to show whether memory grows with the number of galaxies.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ONE_AT_A_TIME = 300  # galaxies timed for the old way; its rate is the same for any number


def measure(mode, run_dir, data, out):
    """Classify `data` one way, write the catalogue to `out`; print galaxies/s and peak RSS as JSON."""
    from galaxy_class.cli import _load
    from galaxy_class.data import open_galaxy10, read_images
    from galaxy_class.predict import predict_proba

    source = Path(run_dir) / "model_int8.tflite" if mode == "tflite int8" else run_dir
    model, config, _ = _load(source)
    start = time.perf_counter()
    if mode == "one at a time":
        g = open_galaxy10(Path(data))
        n = min(ONE_AT_A_TIME, g.n)
        for i in range(n):
            predict_proba(model, read_images(g, [i]))
    else:
        from galaxy_class.catalogue import write_catalogue

        n = write_catalogue(model, config, data, out, batch_size=256, progress=False)
    seconds = time.perf_counter() - start
    # VmHWM, not getrusage: ru_maxrss survives exec, so a child would report its parent's peak.
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"n": n, "per_s": n / seconds, "rss_gb": peak_kb / 2**20}))


def decals_like(path, n, seed=0):
    """A Galaxy10-DECaLS-shaped file of `n` random images, gzip-compressed one image per chunk like the real one."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (n, 256, 256, 3), np.uint8, chunks=(1, 256, 256, 3), compression="gzip")
        for start in range(0, n, 100):
            # Dim noise around a sky level: the decoding and gzip work of real pixels, not their content.
            images[start:start + 100] = rng.integers(10, 40, (min(100, n - start), 256, 256, 3), dtype=np.uint8)
        f["ans"] = rng.integers(0, 10, n).astype(np.uint8)
        f["ra"], f["dec"] = rng.uniform(0, 360, n), rng.uniform(-30, 80, n)


def decals_run(run_dir, data, out):
    """A run of `run_dir`'s model and image size on `data`, trained for two batches (made once)."""
    if not (out / "model.keras").exists():
        from galaxy_class.runs import run_config
        from galaxy_class.train import train

        train(run_config(run_dir).replace(data=str(data), epochs=1, fine_tune_epochs=0, steps_per_epoch=2), out,
              verbose=0)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=SHARED / "gz1_sdss_dev.h5")
    parser.add_argument("--decals", type=int, default=4000, help="images in the generated DECaLS-shaped file")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # internal: MODE DATA OUT
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure[0], args.run_dir, args.measure[1], args.measure[2])

    with tempfile.TemporaryDirectory() as tmp:
        files = [(f"{args.data.name}", args.data, args.run_dir)]
        for n in (args.decals // 4, args.decals):
            path = Path(tmp) / f"decals_like_{n}.h5"
            decals_like(path, n)
            files.append((f"DECaLS-shaped, {n:,} images", path, None))
        # A model takes its data's image size: for 256 px images, the same architecture briefly trained on them
        # (the speed of a network does not depend on how well it is trained).
        files = [(label, path, run or decals_run(args.run_dir, path, Path(tmp) / "decals_run"))
                 for label, path, run in files]
        print("| data | way | galaxies/s | x one at a time | peak RSS GB |")
        print("|---|---|---:|---:|---:|")
        for label, path, run in files:
            if not (run / "model_int8.tflite").exists():
                from galaxy_class.export import export_tflite

                export_tflite(run, "int8", calibration_images=100, verbose=False)
            base = None
            for mode in ("one at a time", "batched Keras", "tflite int8"):
                done = subprocess.run([sys.executable, __file__, str(run), "--measure", mode, str(path),
                                       str(Path(tmp) / "catalogue.csv")], capture_output=True, text=True)
                if done.returncode:
                    sys.exit(done.stderr[-2000:])
                (Path(tmp) / "catalogue.csv").unlink(missing_ok=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                base = base or result["per_s"]
                print(f"| {label} | {mode} | {result['per_s']:,.0f} | {result['per_s'] / base:.1f}x | "
                      f"{result['rss_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
