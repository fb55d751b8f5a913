"""Edge formats of trained runs: file size, batch-1 CPU latency and test accuracy, Keras against TensorFlow Lite.

    python benchmarks/edge.py RUN_DIR [RUN_DIR ...]                 # prints the table, writes edge_results.md
    python benchmarks/edge.py /tmp/exp/mb_default --runs 50         # quicker, noisier

For each run folder: the Keras model three ways (`model.predict`, a direct eager `model(x, training=False)`
call, and the same call compiled with tf.function), then its TFLite exports (float32, float16, int8),
written to a temporary folder so the run folders stay untouched. Latency is one image at a time on the
CPU: the median and 95th percentile over `--runs` calls after `--warmup` calls, each call on the next
test image, with TensorFlow and the TFLite interpreter both limited to `--threads` threads. Accuracy and
macro-F1 are on the run's test split, one view per image (no TTA), for every row on the same images.
Sizes are of the file a device would hold: model.keras (which also stores the optimizer state) for
Keras, the .tflite file otherwise; "x float" is the size relative to the float32 .tflite file.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RESULTS = Path(__file__).resolve().parent / "edge_results.md"
# Issue 13: the int8 file at most 0.35x the float32 one, at most 1 point of accuracy lost, 97% top-1 agreement.
TARGETS = {"size": 0.35, "speedup": 5.0, "accuracy_points": -1.0, "agreement": 0.97}


def latency_ms(call, images, warmup, runs):
    """Median and 95th percentile milliseconds of `call` on one image at a time."""
    for i in range(warmup):
        call(images[i % len(images)][None])
    times = []
    for i in range(runs):
        x = images[i % len(images)][None]
        start = time.perf_counter()
        call(x)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), float(np.percentile(times, 95))


def batched(call, images, batch_size=128):
    return np.concatenate([np.asarray(call(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def compare_formats(run_dir, out_dir, threads=1, warmup=20, runs=200):
    """Keras against its TFLite exports (written to `out_dir`): one row per format with size, batch-1
    latency and test metrics, and the int8 parity report."""
    from galaxy_class.data import open_galaxy10, read_images
    from galaxy_class.evaluate import metrics
    from galaxy_class.export import export_tflite
    from galaxy_class.predict import graph_mode
    from galaxy_class.tflite import TFLiteModel
    from galaxy_class.runs import load_run

    model, config, split = load_run(run_dir)
    g = open_galaxy10(config.data_path or config.data)
    images, labels = read_images(g, split["test"]), g.labels[split["test"]]
    name = f"{config.model} {config.image_size}px" + (f" α={config.alpha}" if config.model.startswith("mobilenet") else "")
    keras_bytes = (Path(run_dir) / "model.keras").stat().st_size

    eager = lambda x: model(x, training=False)  # noqa: E731
    compiled = graph_mode(model)
    formats = [("Keras model.predict", lambda x: model.predict(x, verbose=0), compiled, keras_bytes),
               ("Keras model(x) eager", eager, eager, keras_bytes),
               ("Keras tf.function", compiled, compiled, keras_bytes)]
    parities = {}
    for quantize in ("none", "float16", "int8"):
        path = Path(out_dir) / f"{Path(run_dir).name}_{quantize}.tflite"
        parities[quantize] = export_tflite(run_dir, quantize, out=path, verbose=False)
        lite = TFLiteModel(path, num_threads=threads)
        label = {"none": "TFLite float32", "float16": "TFLite float16", "int8": "TFLite int8"}[quantize]
        formats.append((label, lite, lite, path.stat().st_size))

    rows = []
    for label, timed, predict, size in formats:
        median, p95 = latency_ms(timed, images, warmup, runs)
        m = metrics(labels, batched(predict, images), config.class_names)
        rows.append({"model": name, "format": label, "bytes": size, "median_ms": median, "p95_ms": p95,
                     "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]})
    float_bytes = next(r["bytes"] for r in rows if r["format"] == "TFLite float32")
    predict_ms = rows[0]["median_ms"]
    keras_accuracy = rows[0]["accuracy"]
    for r in rows:
        r.update(size_ratio=r["bytes"] / float_bytes, speedup=predict_ms / r["median_ms"],
                 accuracy_change=100 * (r["accuracy"] - keras_accuracy))
    return rows, parities["int8"]


def formats_table(rows):
    """The rows of `compare_formats` as a markdown table."""
    lines = ["| model | format | size kB | x float | median ms | p95 ms | speed-up vs predict | accuracy, one view | "
             "Δ points | macro-F1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['format']} | {r['bytes'] / 1e3:.0f} | {r['size_ratio']:.2f} | "
                     f"{r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['speedup']:.1f}x | {r['accuracy']:.3f} | "
                     f"{r['accuracy_change']:+.1f} | {r['macro_f1']:.3f} |")
    return "\n".join(lines)


def targets(rows, int8_parity):
    """The issue's int8 targets, per model: met or not."""
    lines = ["| model | int8 size ≤ 0.35x float | ≥ 5x faster than predict | ≤ 1 point accuracy lost | "
             "≥ 97% top-1 agreement with Keras |", "|---|---|---|---|---|"]
    for r in (r for r in rows if r["format"] == "TFLite int8"):
        size = f"{r['size_ratio']:.2f}x"
        speed = f"{r['speedup']:.1f}x"
        accuracy = f"{r['accuracy_change']:+.1f}"
        agreement = int8_parity[r["model"]]["top1_agreement"]
        lines.append(f"| {r['model']} | {_mark(r['size_ratio'] <= TARGETS['size'], size)} | "
                     f"{_mark(r['speedup'] >= TARGETS['speedup'], speed)} | "
                     f"{_mark(r['accuracy_change'] >= TARGETS['accuracy_points'], accuracy)} | "
                     f"{_mark(agreement >= TARGETS['agreement'], f'{agreement:.1%}')} |")
    return "\n".join(lines)


def _mark(ok, text):
    return f"{'yes' if ok else 'NO'} ({text})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for TensorFlow and TFLite (default 1)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200, help="timed batch-1 calls per format")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file for the table")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from galaxy_class.tflite import interpreter_name

    rows, int8_parity = [], {}
    with tempfile.TemporaryDirectory() as out_dir:
        for run_dir in args.runs_dirs:
            run_rows, parity = compare_formats(run_dir, out_dir, args.threads, args.warmup, args.runs)
            rows += run_rows
            int8_parity[run_rows[0]["model"]] = parity
    runtime = interpreter_name()
    if runtime == "LiteRT":
        from importlib.metadata import version

        runtime += f" {version('ai-edge-litert')}"
    header = (f"Batch-1 CPU latency, {args.threads} thread(s), {args.runs} timed calls after {args.warmup} warm-up; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; TensorFlow {tf.__version__}, "
              f"Keras {keras.__version__}, TFLite runtime {runtime}. Accuracy on each run's test split "
              f"({', '.join(str(r['n']) for r in rows if r['format'] == 'TFLite int8')} images), no TTA; "
              f"Δ points against Keras model.predict.")
    text = "\n\n".join([header, formats_table(rows), targets(rows, int8_parity)])
    print(text)
    command = "python benchmarks/edge.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(f"# Edge formats: size, latency, accuracy\n\n`{command}`\n\n{text}\n")
    print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
