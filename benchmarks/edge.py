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
import sys
import tempfile
from pathlib import Path


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RESULTS = Path(__file__).resolve().parent / "edge_results.md"
TARGETS = {"size": 0.3, "speedup": 5.0, "accuracy_points": -1.0}


def targets(rows, int8_parity):
    """The issue's int8 targets, per model: met or not."""
    lines = ["| model | int8 size ≤ 0.30x float | ≥ 5x faster than predict | ≤ 1 point accuracy lost | "
             "int8 top-1 agreement with Keras |", "|---|---|---|---|---|"]
    for r in (r for r in rows if r["format"] == "TFLite int8"):
        size = f"{r['size_ratio']:.2f}x"
        speed = f"{r['speedup']:.1f}x"
        accuracy = f"{r['accuracy_change']:+.1f}"
        lines.append(f"| {r['model']} | {_mark(r['size_ratio'] <= TARGETS['size'], size)} | "
                     f"{_mark(r['speedup'] >= TARGETS['speedup'], speed)} | "
                     f"{_mark(r['accuracy_change'] >= TARGETS['accuracy_points'], accuracy)} | "
                     f"{int8_parity[r['model']]['top1_agreement']:.1%} |")
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
    from galaxy_class.export import compare_formats, formats_table, interpreter_name

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
