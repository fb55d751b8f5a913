"""TensorFlow Lite export of a trained run (float32, float16 or full-integer int8), and running the exported file.

An exported file keeps the Keras model's uint8 image input (resizing and scaling stay inside it) and
carries the run's settings as metadata, so predicting needs nothing but the file. Evaluating on the
run's own data also needs the run's split.npz, found beside the file or in the run folder it came from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from galaxy_class.config import Config
from galaxy_class.data import load_split, open_galaxy10, read_images
from galaxy_class.errors import GalaxyClassError, first_line

QUANTIZE = ("none", "float16", "int8")
METADATA_NAME = "galaxy_class"
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

    from galaxy_class.train import load_run

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
    if quantize == "float16":
        options.update(optimizations=[tf.lite.Optimize.DEFAULT],
                       target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS],
                                    "supported_types": [tf.float16]})
    elif quantize == "int8":
        calibration = calibration_set(g, split["train"], calibration_images, config.seed)
        options.update(optimizations=[tf.lite.Optimize.DEFAULT],
                       representative_dataset=lambda: ([image[None]] for image in calibration),
                       target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
                       inference_input_type=tf.uint8, inference_output_type=tf.uint8)
    signature = [tf.TensorSpec((None, *config.input_shape), tf.uint8, name="image")]
    content = to_tflite(model, signature, options)
    if quantize == "int8":
        content = integer_only_input(content)
    metadata = {
        "quantize": quantize,
        "run_dir": str(run_dir.resolve()),
        "test_split_sha256": _split_digest(split),
        "config": dataclasses.asdict(config),
        "exported_with": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    _atomic_write(out, with_metadata(content, metadata))

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
    from galaxy_class.evaluate import metrics, predict_file

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


def graph_mode(model):
    """`model` called through a tf.function, i.e. with the numerics of `fit`, `predict` and the exported file."""
    import tensorflow as tf

    spec = tf.TensorSpec(model.input.shape, model.input.dtype)  # one trace for every batch size
    call = tf.function(lambda images: model(images, training=False), input_signature=[spec])
    return lambda images, training=False: call(images)


def parity_summary(report):
    """Two lines on how closely the exported file follows the Keras model."""
    change = 100 * (report["tflite_accuracy"] - report["keras_accuracy"])
    return (f"Parity on the run's test split ({report['n']} images, no TTA): top-1 agreement "
            f"{report['top1_agreement']:.1%} with the Keras model, largest probability difference "
            f"{report['max_abs_probability_difference']:.3f}\n"
            f"accuracy: Keras {report['keras_accuracy']:.3f}, TFLite {report['tflite_accuracy']:.3f} "
            f"({change:+.1f} points); macro-F1: Keras {report['keras_macro_f1']:.3f}, "
            f"TFLite {report['tflite_macro_f1']:.3f}")


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
    from galaxy_class.evaluate import metrics
    from galaxy_class.train import load_run

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


class TFLiteModel:
    """An exported .tflite classifier, called like the Keras model: uint8 images (n, H, W, 3) -> probabilities (n, K)."""

    def __init__(self, path, num_threads=None):
        self.path = Path(path)
        content = _read_tflite(self.path)
        self.metadata = read_metadata(content, self.path)
        try:
            self.interpreter = _interpreter_class()(model_content=content, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise GalaxyClassError(f"{self.path}: cannot load it as a TensorFlow Lite model ({first_line(e)})") from None
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])

    @property
    def input_dtype(self):
        return self._input["dtype"]

    def __call__(self, images, training=False):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"{self.path} takes uint8 images, got {images.dtype}")
        if len(images) != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], images.shape, strict=True)
            self.interpreter.allocate_tensors()
            self._batch = len(images)
        self.interpreter.set_tensor(self._input["index"], images)
        self.interpreter.invoke()
        probs = self.interpreter.get_tensor(self._output["index"])
        scale, zero_point = self._output["quantization"]
        if scale:  # an int8 export's probabilities come out quantized
            probs = (probs.astype(np.float32) - zero_point) * scale
        return probs


def load_tflite(path):
    """An exported file as (TFLiteModel, Config, split), like `train.load_run` for a run folder.

    The split is read from the run folder only when first used, so predicting needs just the file.
    """
    model = TFLiteModel(path)
    config = Config(**{k: v for k, v in model.metadata["config"].items()
                       if k in {f.name for f in dataclasses.fields(Config)}})
    return model, config, _RunSplit(model.path, model.metadata)


class _RunSplit(Mapping):
    """The split of the run an exported file came from: split.npz beside the file, else in its run folder."""

    def __init__(self, path, metadata):
        self._path, self._metadata, self._split = path, metadata, None

    def _load(self):
        if self._split is None:
            folders = dict.fromkeys([self._path.parent.resolve(), Path(self._metadata["run_dir"])])
            for folder in folders:
                if (folder / "split.npz").is_file():
                    split = load_split(folder / "split.npz")
                    if _split_digest(split) == self._metadata["test_split_sha256"]:
                        self._split = split
                        return split
            raise GalaxyClassError(
                f"{self._path}: cannot find the split of the run it was exported from (no matching split.npz "
                f"in {' or '.join(map(str, folders))}); pass --data to evaluate on all of another file")
        return self._split

    def __getitem__(self, key):
        return self._load()[key]

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return len(self._load())


def with_metadata(content: bytes, metadata: dict) -> bytes:
    """The .tflite flatbuffer `content` with `metadata` added as JSON under the name "galaxy_class"."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
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


def read_metadata(content: bytes, path) -> dict:
    """The "galaxy_class" metadata of an exported file; GalaxyClassError if the file has none."""
    schema = _schema()
    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            try:
                return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
            except ValueError:
                break
    raise GalaxyClassError(f"{path}: a TensorFlow Lite model, but not one exported by galaxy-class "
                           "(no galaxy_class metadata); export a run with `galaxy-class export`")


def interpreter_name():
    """Which runtime runs .tflite files here: LiteRT (ai_edge_litert) when installed, else TensorFlow's."""
    return "LiteRT" if _interpreter_class().__module__.startswith("ai_edge_litert") else "tf.lite"


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # e.g. Colab, which has TensorFlow but not LiteRT
        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
        Interpreter = tf.lite.Interpreter
    return Interpreter


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _read_tflite(path: Path) -> bytes:
    if not path.exists():
        raise GalaxyClassError(f"{path}: no such file")
    if path.is_dir():
        raise GalaxyClassError(f"{path}: is a folder, not a .tflite file")
    try:
        content = path.read_bytes()
    except OSError as e:
        raise GalaxyClassError(f"{path}: cannot read it ({e.strerror})") from None
    # A TFLite flatbuffer carries the file identifier "TFL3" after its 4-byte root offset.
    if content[4:8] != b"TFL3":
        raise GalaxyClassError(f"{path}: not a TensorFlow Lite model (no TFL3 identifier)")
    return content


def _replaceable(path: Path, run_dir: Path) -> bool:
    """True if `path` is an earlier export (or parity report) of this run, False if absent; GalaxyClassError otherwise."""
    if not path.exists():
        return False
    try:
        if path.suffix == ".tflite":
            source = read_metadata(_read_tflite(path), path)["run_dir"]
        else:
            source = json.loads(path.read_text())["run_dir"]
    except (GalaxyClassError, OSError, ValueError, KeyError, TypeError):
        source = None
    if source != str(run_dir.resolve()):
        raise GalaxyClassError(f"{path}: already exists and is not an earlier export of {run_dir}; "
                               "remove it or choose another --out")
    return True


def _split_digest(split) -> str:
    return hashlib.sha256(np.asarray(split["test"], np.int64).tobytes()).hexdigest()


def _atomic_write(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
