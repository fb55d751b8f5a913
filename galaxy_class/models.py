"""MobileNet and SqueezeNet classifiers that take uint8 images and do their own preprocessing."""

import os
from pathlib import Path

import h5py
import keras
import numpy as np
from keras import layers

from galaxy_class.errors import GalaxyClassError, first_line

ARCHITECTURES = ("mobilenet", "mobilenet_v2", "squeezenet")

# SqueezeNet v1.1 ImageNet weights without top (converted from Caffe by rcmalli/keras-squeezenet, MIT).
SQUEEZENET_WEIGHTS_URL = (
    "https://raw.githubusercontent.com/rcmalli/keras-squeezenet/62b3f05869108b7e6b0510739473bf6ccfbf1073"
    "/weights/squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
SQUEEZENET_WEIGHTS_SHA256 = "2d935d8c102ad1232484a77da8e6fbdf3ff4ab608974a0d8b6283115ffff204f"
# Keras Applications' MobileNet v1 files; we always take the one trained at 224 px, whatever the input size,
# so a run's weights do not depend on its image size.
MOBILENET_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
MOBILENET_ALPHAS = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}
# The default models' ImageNet files ship with the repository (weights/README.md), so `make run` works offline.
BUNDLED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
# Caffe-mode ImageNet means, in RGB order: the weights were trained on BGR images with these removed.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
# "auto" and the Keras dtype policies a run may train under (see choose_precision).
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# Architectures that trained faster under mixed_bfloat16 than float32 on CPUs with bf16 units
# (benchmarks/train_speed.py); MobileNet's depthwise convolutions were slower.
BF16_FASTER_ON_CPU = ("squeezenet",)
# (squeeze, expand) filters of fire2..fire9 in SqueezeNet v1.1.
FIRE_FILTERS = {2: (16, 64), 3: (16, 64), 4: (32, 128), 5: (32, 128),
                6: (48, 192), 7: (48, 192), 8: (64, 256), 9: (64, 256)}


def build_model(arch, num_classes, input_shape, image_size=128, weights="imagenet",
                alpha=0.25, dropout=0.2, batchnorm=False, dtype_policy="float32"):
    """A classifier on uint8 images of `input_shape`; resizing and scaling are layers inside it.

    `weights` is "none", "imagenet" (downloaded by Keras and cached) or a path to a weights file.
    The pretrained part is the sub-model named "base"; the head is pooling, dropout and softmax.
    `dtype_policy` is one of PRECISIONS[1:]: mixed policies compute in 16 bits, keep float32
    variables, and the softmax output stays float32.
    """
    if arch not in ARCHITECTURES:
        raise GalaxyClassError(f"unknown model {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    if dtype_policy not in PRECISIONS[1:]:
        raise GalaxyClassError(f"unknown precision {dtype_policy!r}: choose one of {', '.join(PRECISIONS[1:])}")
    weights = _check_weights(weights)
    # Keras layers take the global policy when made (keras.applications gives no other way in), so it is
    # set for the building only and put back after.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        return _build(arch, num_classes, input_shape, image_size, weights, alpha, dropout, batchnorm)
    finally:
        keras.config.set_dtype_policy(previous)


def _build(arch, num_classes, input_shape, image_size, weights, alpha, dropout, batchnorm):
    size = (image_size, image_size, 3)
    if arch == "squeezenet":
        base = squeezenet_base(size, batchnorm=batchnorm)
        if weights is not None:
            if weights == "imagenet":
                weights = _download_weights("squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                            SQUEEZENET_WEIGHTS_URL, SQUEEZENET_WEIGHTS_SHA256)
            load_squeezenet_weights(base, weights)
        scale = layers.Normalization(mean=CAFFE_MEAN_RGB, variance=(1.0, 1.0, 1.0), name="caffe_mean")
    else:
        app = keras.applications.MobileNet if arch == "mobilenet" else keras.applications.MobileNetV2
        if arch == "mobilenet" and weights == "imagenet":
            if alpha not in MOBILENET_ALPHAS:
                raise GalaxyClassError(f"no ImageNet MobileNet weights for alpha={alpha}: use one of {list(MOBILENET_ALPHAS)}")
            name = f"mobilenet_{MOBILENET_ALPHAS[alpha]}_224_tf_no_top.h5"
            weights = _download_weights(name, MOBILENET_WEIGHTS_URL + name)
        try:
            base = app(input_shape=size, alpha=alpha, include_top=False, weights=weights)
        except Exception as e:  # Keras raises plain Exception for downloads, ValueError for bad files
            raise GalaxyClassError(f"cannot load {arch} weights {weights!r}: {first_line(e)}") from None
        scale = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")
    base.name = "base"

    inputs = keras.Input(input_shape, dtype="uint8", name="image")
    # Scaling first turns the uint8 input into float32: eager Resizing of uint8 rounds back to uint8,
    # graph-mode Resizing does not. Bilinear resizing commutes with the per-channel affine scaling.
    x = scale(inputs)
    x = layers.Resizing(image_size, image_size, name="resize")(x)
    # A pretrained base called without a training flag (model(x)) runs in inference mode; new BatchNorm
    # layers (from scratch, or added to SqueezeNet) must learn their statistics. This does not hold in fit():
    # Keras 3 hands the outer training flag to the nested model, so whether the base's BatchNorm follows the
    # galaxies while it fine-tunes is train.set_trainable's choice (trainable=False = inference mode).
    frozen_stats = weights is not None and not (arch == "squeezenet" and batchnorm)
    x = base(x, training=False if frozen_stats else None)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 whatever the policy: a 16-bit softmax and loss lose precision and can overflow.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=arch)


def squeezenet_base(input_shape, batchnorm=False):
    """SqueezeNet v1.1 convolutional part (conv1..fire9); layer names follow the ImageNet weight file."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(64, 3, strides=2, padding="valid", name="conv1")(inputs)
    x = _bn_relu(x, "conv1", batchnorm)
    for i in range(2, 10):
        if i in (2, 4, 6):
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{i - 1}")(x)
        squeeze, expand = FIRE_FILTERS[i]
        x = layers.Conv2D(squeeze, 1, name=f"fire{i}_squeeze1x1")(x)
        x = _bn_relu(x, f"fire{i}_squeeze1x1", batchnorm)
        left = layers.Conv2D(expand, 1, activation="relu", name=f"fire{i}_expand1x1")(x)
        right = layers.Conv2D(expand, 3, padding="same", activation="relu", name=f"fire{i}_expand3x3")(x)
        x = layers.Concatenate(name=f"fire{i}_concat")([left, right])
    return keras.Model(inputs, x, name="squeezenet_v1_1")


def _bn_relu(x, name, batchnorm):
    if batchnorm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def load_squeezenet_weights(base, path):
    """Copy the Keras 2 weight file of SqueezeNet v1.1 into `base`, converting conv1 from BGR to RGB."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            for group_name in [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]:
                group = f[group_name]
                values = [np.asarray(group[w]) for w in group.attrs["weight_names"]]
                if not values:  # pooling, activation and input layers are listed too
                    continue
                if group_name == "conv1":
                    values[0] = values[0][:, :, ::-1, :]  # Caffe BGR input channels -> our RGB input
                base.get_layer(group_name.replace("/", "_")).set_weights(values)
    except (OSError, KeyError, ValueError) as e:
        raise GalaxyClassError(f"{path}: not a SqueezeNet v1.1 weight file ({first_line(e)})") from None


def _download_weights(file_name, url, sha256=None):
    """A pretrained weight file: the bundled copy, else Keras' cache (KERAS_HOME/models), downloaded on first use."""
    if (BUNDLED_WEIGHTS / file_name).is_file():
        return str(BUNDLED_WEIGHTS / file_name)
    try:
        return keras.utils.get_file(file_name, url, file_hash=sha256, cache_subdir="models")
    except Exception as e:  # Keras raises plain Exception for URL errors
        raise GalaxyClassError(
            f"cannot download ImageNet weights from {url} ({first_line(e)}): put the file at "
            f"{Path(os.environ.get('KERAS_HOME', Path.home() / '.keras')) / 'models' / file_name} "
            "or pass weights as a path or none"
        ) from None


def _check_weights(weights):
    if weights in (None, "none"):
        return None
    if weights == "imagenet":
        return weights
    if not Path(weights).is_file():
        raise GalaxyClassError(f"{weights}: weights file not found (use none, imagenet or a path)")
    return str(weights)


def base_model(model):
    """The pretrained convolutional part of a model made by `build_model`."""
    return model.get_layer("base")


def choose_precision(precision, arch, gpu_capabilities=None, cpu_flags=None):
    """(dtype policy, why) for training `arch`: `precision` itself unless "auto", which picks mixed_float16 on
    CUDA GPUs with tensor cores, mixed_bfloat16 on CPUs with bf16 units for BF16_FASTER_ON_CPU, else float32.

    `gpu_capabilities` (compute capabilities of the visible GPUs) and `cpu_flags` default to this machine's.
    """
    if precision not in PRECISIONS:
        raise GalaxyClassError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision, "as asked"
    gpu_capabilities = _gpu_capabilities() if gpu_capabilities is None else gpu_capabilities
    if gpu_capabilities:
        if min(gpu_capabilities) >= (7, 0):
            return "mixed_float16", "CUDA GPU with float16 tensor cores"
        return "float32", "GPU without float16 tensor cores (compute capability below 7.0)"
    cpu_flags = _cpu_flags() if cpu_flags is None else set(cpu_flags)
    bf16 = cpu_flags & {"amx_bf16", "avx512_bf16"}
    if arch in BF16_FASTER_ON_CPU and bf16:
        return "mixed_bfloat16", f"CPU with {' and '.join(sorted(bf16))}, where {arch} trains faster in bfloat16"
    if arch in BF16_FASTER_ON_CPU:
        return "float32", "CPU without bfloat16 units"
    return "float32", f"CPU, where {arch} trains no faster in bfloat16"


def _gpu_capabilities():
    """Compute capabilities of the visible CUDA GPUs, e.g. [(7, 5)] for a T4."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
    # A GPU without a compute capability (not CUDA, e.g. Apple's Metal plugin) counts as one without tensor cores.
    return [tuple(d.get("compute_capability") or (0, 0)) for d in details]


def _cpu_flags():
    """The CPU feature flags Linux lists in /proc/cpuinfo (empty elsewhere: float32 is the safe choice)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
