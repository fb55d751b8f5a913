"""TensorFlow Lite export of a trained run (float32, float16 or full-integer int8), checked against the Keras model.

An exported file keeps the Keras model's uint8 image input (resizing and scaling stay inside it) and
carries the run's settings as metadata (see `galaxy_class.tflite`, which runs it). Before int8 conversion a
MobileNet v1 is equalised and bias-corrected on the calibration images (`galaxy_class.quantize`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from galaxy_class.batches import dihedral
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.errors import GalaxyClassError
from galaxy_class.quantize import prepare_for_int8
from galaxy_class.tflite import METADATA_NAME, TFLiteModel, read_metadata, read_tflite, split_digest

QUANTIZE = ("none", "float16", "int8")
CALIBRATION_IMAGES = 300


def default_path(run_dir, quantize):
    """Where `export` writes by default: RUN_DIR/model_{quantize}.tflite."""
    return Path(run_dir) / f"model_{quantize}.tflite"


def parity_path(tflite_path):
    """The parity report written beside an exported file: model_int8.tflite -> model_int8.parity.json."""
    return Path(tflite_path).with_suffix(".parity.json")


def export_tflite(run_dir, quantize="int8", out=None, calibration_images=CALIBRATION_IMAGES, verbose=True):
    """Convert the run's Keras model to a .tflite file and check it against the Keras model on the test split.

    Returns the parity report (also written as JSON beside the file). An existing file is replaced only
    if it is an earlier export of the same run.
    """
    import keras
    import tensorflow as tf

    from galaxy_class.runs import load_run

    if quantize not in QUANTIZE:
        raise GalaxyClassError(f"unknown quantization {quantize!r}: choose one of {', '.join(QUANTIZE)}")
    if quantize == "int8" and calibration_images < 1:
        raise GalaxyClassError(f"int8 export needs at least one calibration image, not {calibration_images}")
    run_dir = Path(run_dir)
    model, config, split = load_run(run_dir)
    out = Path(out) if out else default_path(run_dir, quantize)
    if out.suffix != ".tflite":
        raise GalaxyClassError(f"{out}: an exported model's file name must end in .tflite")
    replacing = [p for p in (out, parity_path(out)) if _replaceable(p, run_dir)]
    g = open_galaxy10(config.data_path or config.data)
    # Recorded absolute: a relative data path means nothing once the file is used from another folder.
    config = config.replace(data_path=str(Path(g.path).resolve()))

    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    converted = model
    if quantize == "float16":
        options.update(optimizations=[tf.lite.Optimize.DEFAULT],
                       target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS],
                                    "supported_types": [tf.float16]})
    elif quantize == "int8":
        calibration = calibration_set(g, split["train"], calibration_images, config.seed)
        converted = prepare_for_int8(model, calibration, np.concatenate([dihedral(calibration, k) for k in range(8)]))
        options.update(optimizations=[tf.lite.Optimize.DEFAULT],
                       representative_dataset=lambda: ([image[None]] for image in calibration),
                       target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
                       inference_input_type=tf.uint8, inference_output_type=tf.uint8)
    signature = [tf.TensorSpec((None, *config.input_shape), tf.uint8, name="image")]
    content = to_tflite(converted, signature, options)
    if quantize == "int8":
        content = integer_only_input(content)
    metadata = {
        "quantize": quantize,
        "run_dir": str(run_dir.resolve()),
        "test_split_sha256": split_digest(split),
        "config": dataclasses.asdict(config),
        "exported_with": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    _atomic_write(out, finished(content, metadata))

    lite = TFLiteModel(out)
    report = parity(model, lite, g, split["test"], config.class_names)
    report.update(tflite=str(out), quantize=quantize, run_dir=str(run_dir.resolve()), tflite_bytes=out.stat().st_size,
                  keras_bytes=(run_dir / "model.keras").stat().st_size,
                  calibration_images=calibration_images if quantize == "int8" else 0)
    _atomic_write(parity_path(out), (json.dumps(report, indent=1) + "\n").encode())
    if verbose:
        for p in replacing:
            print(f"Replaced the earlier export {p}")
        print(f"Wrote {out} ({report['tflite_bytes'] / 1e3:.0f} kB; the Keras model.keras is "
              f"{report['keras_bytes'] / 1e3:.0f} kB)")
        print(parity_summary(report))
        print(f"Wrote {parity_path(out)}")
    return report


def to_tflite(model, signature, options):
    """The .tflite flatbuffer of `model`, converted by Keras' LiteRT exporter with TFLiteConverter `options`."""
    import keras

    # Keras 3.13 prints the temporary file's path whatever `verbose` says, and needs it as a str (endswith).
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        converted = os.path.join(tmp, "model.tflite")
        try:
            model.export(converted, format="litert", input_signature=signature, verbose=False, **options)
        except ValueError as e:
            if "Unrecognized format" not in str(e):
                raise
            raise GalaxyClassError(f"TensorFlow Lite export needs Keras 3.13 or newer (format='litert'); this is "
                                   f"Keras {keras.__version__}") from None
        return Path(converted).read_bytes()


def calibration_set(g, train_indices, n, seed):
    """`n` training images drawn at random (seeded) for int8 calibration, uint8 (n, H, W, 3)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(train_indices, size=min(n, len(train_indices)), replace=False)
    return read_images(g, np.sort(chosen))


def parity(keras_model, tflite_model, g, indices, class_names, batch_size=128):
    """Top-1 agreement of the two models and each one's accuracy and macro-F1 on images `indices` (no TTA).

    The Keras model runs as a tf.function, as in training, `model.predict` and the export.
    """
    from galaxy_class.evaluate import metrics
    from galaxy_class.predict import graph_mode, predict_file

    keras_probs, labels = predict_file(graph_mode(keras_model), g, indices, batch_size=batch_size)
    lite_probs, _ = predict_file(tflite_model, g, indices, batch_size=batch_size)
    keras_m, lite_m = metrics(labels, keras_probs, class_names), metrics(labels, lite_probs, class_names)
    return {
        "n": int(len(labels)),
        "split": "test",
        "tta": False,
        "top1_agreement": float(np.mean(keras_probs.argmax(1) == lite_probs.argmax(1))),
        "max_abs_probability_difference": float(np.abs(keras_probs - lite_probs).max()),
        "keras_accuracy": keras_m["accuracy"],
        "tflite_accuracy": lite_m["accuracy"],
        "keras_macro_f1": keras_m["macro_f1"],
        "tflite_macro_f1": lite_m["macro_f1"],
    }


def parity_summary(report):
    """Two lines on how closely the exported file follows the Keras model."""
    change = 100 * (report["tflite_accuracy"] - report["keras_accuracy"])
    return (f"Parity on the run's test split ({report['n']} images, no TTA): top-1 agreement "
            f"{report['top1_agreement']:.1%} with the Keras model, largest probability difference "
            f"{report['max_abs_probability_difference']:.3f}\n"
            f"accuracy: Keras {report['keras_accuracy']:.3f}, TFLite {report['tflite_accuracy']:.3f} "
            f"({change:+.1f} points); macro-F1: Keras {report['keras_macro_f1']:.3f}, "
            f"TFLite {report['tflite_macro_f1']:.3f}")


def exports_table(reports):
    """Parity reports of one run's exports (`export_tflite`) as a markdown table: each file's size, and how closely
    it follows the Keras model on the test split. Their speed is measured by benchmarks/edge.py."""
    float_bytes = next((r["tflite_bytes"] for r in reports if r["quantize"] == "none"), None)

    def size(n):
        return f"{n / 1e3:.0f} | " + (f"{n / float_bytes:.2f}" if float_bytes else "")

    lines = ["| file | size kB | x float32 .tflite | accuracy, one view | Δ points vs Keras | macro-F1 | "
             "top-1 agreement | largest probability difference |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    if reports:
        r = reports[0]
        lines.append(f"| model.keras | {size(r['keras_bytes'])} | {r['keras_accuracy']:.3f} | | {r['keras_macro_f1']:.3f} | | |")
    for r in reports:
        lines.append(f"| {Path(r['tflite']).name} | {size(r['tflite_bytes'])} | {r['tflite_accuracy']:.3f} | "
                     f"{100 * (r['tflite_accuracy'] - r['keras_accuracy']):+.1f} | {r['tflite_macro_f1']:.3f} | "
                     f"{r['top1_agreement']:.1%} | {r['max_abs_probability_difference']:.3f} |")
    return "\n".join(lines)


def finished(content: bytes, metadata: dict) -> bytes:
    """The .tflite flatbuffer `content` as it is written: `metadata` added as JSON under the name "galaxy_class",
    and the tensors' names dropped. Those names are labels for debugging that no runtime reads (15 kB, 5% of a
    MobileNet alpha=0.25 int8 file); the signature, which names the input and the output, is kept."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    signatures = model.signatureDefs
    flatbuffer_utils.strip_strings(model)  # also drops the signatures, "useless without names": not so
    model.signatureDefs = signatures
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def integer_only_input(content: bytes) -> bytes:
    """An int8 model whose uint8 image goes straight into its first Quantize op, without a float32 Cast.

    Keras casts the uint8 input to float32 in its first layer, and the converter keeps that Cast followed by
    a Quantize to int8; integer-only hardware cannot run it. Quantize also requantizes uint8 to int8,
    exactly here (scale 1: int8 = pixel - 128), so the Cast goes and the input gets scale 1, zero point 0.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    image = graph.inputs[0]

    def consumers(tensor):
        return [op for op in graph.operators if tensor in op.inputs]

    def name(op):
        return flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)

    first = consumers(image)
    if len(first) != 1 or name(first[0]) != "CAST":
        return content
    cast = first[0]
    quantizes = consumers(cast.outputs[0])
    if len(quantizes) != 1 or name(quantizes[0]) != "QUANTIZE":
        return content
    quantizes[0].inputs[0] = image
    graph.operators.remove(cast)
    graph.tensors[image].quantization = schema.QuantizationParametersT()
    graph.tensors[image].quantization.scale, graph.tensors[image].quantization.zeroPoint = [1.0], [0]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _replaceable(path: Path, run_dir: Path) -> bool:
    """True if `path` is an earlier export (or parity report) of this run, False if absent; GalaxyClassError otherwise."""
    if not path.exists():
        return False
    try:
        if path.suffix == ".tflite":
            source = read_metadata(read_tflite(path), path)["run_dir"]
        else:
            source = json.loads(path.read_text())["run_dir"]
    except (GalaxyClassError, OSError, ValueError, KeyError, TypeError):
        source = None
    if source != str(run_dir.resolve()):
        raise GalaxyClassError(f"{path}: already exists and is not an earlier export of {run_dir}; "
                               "remove it or choose another --out")
    return True


def _atomic_write(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
