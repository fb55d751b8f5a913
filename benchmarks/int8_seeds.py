"""int8 exports of several runs (e.g. the same recipe at several seeds) against their Keras models.

    python benchmarks/int8_seeds.py runs/recipes/mobilenet-s0 runs/recipes/mobilenet-s1 runs/recipes/mobilenet-s2

For each run folder: a float32 and an int8 .tflite file (written to a temporary folder, as `export` writes
them), the int8 file's size against the float32 one, and on the run's test split (one view per image) the
int8 file's top-1 agreement with the Keras model and its accuracy change. The targets of issue 13 are
marked: at most 0.35x the float32 size, at most 1 point of accuracy lost, at least 97% agreement.
"""

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    args = parser.parse_args(argv)

    from galaxy_class.runs import run_config
    from galaxy_class.export import export_tflite

    print("| run | model | test galaxies | int8 size x float32 | top-1 agreement | accuracy Keras -> int8 | "
          "Δ points | targets met |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as out_dir:
        for run_dir in args.runs_dirs:
            reports = {q: export_tflite(run_dir, q, out=Path(out_dir) / f"{run_dir.name}_{q}.tflite", verbose=False)
                       for q in ("none", "int8")}
            r = reports["int8"]
            ratio = r["tflite_bytes"] / reports["none"]["tflite_bytes"]
            change = 100 * (r["tflite_accuracy"] - r["keras_accuracy"])
            met = ratio <= 0.35 and change >= -1 and r["top1_agreement"] >= 0.97
            print(f"| {run_dir} | {run_config(run_dir).model} | {r['n']} | {ratio:.3f} | {r['top1_agreement']:.1%} | "
                  f"{r['keras_accuracy']:.3f} -> {r['tflite_accuracy']:.3f} | {change:+.1f} | "
                  f"{'yes' if met else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
