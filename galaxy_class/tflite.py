"""Running an exported .tflite file: the classifier, its galaxy_class metadata, and the split of the run it
came from. An exported file keeps the Keras model's uint8 image input and carries the run's settings, so
predicting needs nothing but the file; evaluating on the run's own data also needs the run's split.npz,
found beside the file or in the run folder it came from.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from galaxy_class.batches import usable_cpus
from galaxy_class.config import Config
from galaxy_class.data import load_split
from galaxy_class.errors import GalaxyClassError, first_line

METADATA_NAME = "galaxy_class"


class TFLiteModel:
    """An exported .tflite classifier, called like the Keras model: uint8 images (n, H, W, 3) -> probabilities (n, K).

    It runs on `num_threads` CPU threads, by default all of them as TensorFlow does (the interpreter's own
    default is one: a batch of 256 ran 1.6x faster on 2 threads than on 1).
    """

    def __init__(self, path, num_threads=None):
        self.path = Path(path)
        num_threads = num_threads or usable_cpus()
        content = read_tflite(self.path)
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
    """An exported file as (TFLiteModel, Config, split), like `runs.load_run` for a run folder.

    The split is read from the run folder only when first used, so predicting needs just the file.
    """
    model = TFLiteModel(path)
    config = Config.from_dict(model.metadata["config"])
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
                    if split_digest(split) == self._metadata["test_split_sha256"]:
                        self._split = split
                        return split
            raise GalaxyClassError(
                f"{self._path}: cannot find the split of the run it was exported from (no matching split.npz "
                f"in {' or '.join(map(str, folders))}); pass --data FILE --all to evaluate on all of another file")
        return self._split

    def __getitem__(self, key):
        return self._load()[key]

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return len(self._load())


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


def read_tflite(path: Path) -> bytes:
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


def split_digest(split) -> str:
    return hashlib.sha256(np.asarray(split["test"], np.int64).tobytes()).hexdigest()
