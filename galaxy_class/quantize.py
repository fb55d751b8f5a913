"""Preparing a trained MobileNet v1 for full-integer int8, so that the int8 file follows the float model.

Two transforms of a copy of the model, both from Nagel et al. 2019 ("Data-Free Quantization Through Weight
Equalization and Bias Correction"), measured on real training images:

- `equalize_activations`: many channels after a ReLU6 stay far below 6, the top of their tensor's one int8
  range, and the next layer gives them large weights to make up for it. Each such channel is scaled up
  (its BatchNormalization's gamma and beta) and the weights reading it down by the same factor, so int8
  spends its levels where the values are. Cross-layer equalisation with ReLU6 kept: a channel is only scaled
  up, and only as far as its ReLU6 never clipped it on the images, with room to spare (HEADROOM). The float
  model is unchanged on images that stay within that room; one that drives a scaled channel further is
  clipped where the original was not (benchmarks/equalisation.py measures by how much).
- `correct_bias`: rounding a convolution's weights to int8, and the activations before it, shifts the
  average of its output channels; BatchNormalization then multiplies that shift by large factors where a
  channel's variance is small. Each BatchNormalization's mean is moved to cancel the shift measured on
  the images.
"""

from __future__ import annotations

import numpy as np

RELU6 = 6.0
# Scaled channels reach 6 / HEADROOM on the measured images, leaving room for brighter unseen ones.
HEADROOM = 1.5
# Nearly silent channels would need huge factors; beyond this one the float rounding costs more than int8 gains.
MAX_FACTOR = 10.0


def prepare_for_int8(model, images, views):
    """`model` with both transforms applied (peaks measured on `views`, means on `images`), or with its Caffe mean
    folded into its first convolution (SqueezeNet), or `model` itself (MobileNet v2)."""
    from keras import layers

    if any(layer.name == "caffe_mean" for layer in model.layers):
        return fold_mean(model)
    base = model.get_layer("base")
    chain = all(len(layer._inbound_nodes) == 1 and _inbound(layer) is not None for layer in base.layers[1:])
    if not (chain and any(isinstance(layer, layers.BatchNormalization) for layer in base.layers)):
        return model
    return correct_bias(equalize_activations(model, views), images)


def fold_mean(model):
    """A copy of a SqueezeNet made by `build_model` that subtracts its Caffe mean in conv1's bias instead of a
    layer before it: the same float model (conv1 pads nothing, and resizing keeps a constant), whose first
    tensor is then the image itself, which int8 holds exactly (scale 1) instead of at a coarser scale."""
    import keras

    from galaxy_class.models import CAFFE_MEAN_RGB

    def without_mean(layer):
        if layer.name == "caffe_mean":
            return keras.layers.Normalization(mean=(0.0,) * 3, variance=(1.0,) * 3, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=without_mean)
    copy.set_weights(model.get_weights())
    mean = np.asarray(CAFFE_MEAN_RGB, np.float32)
    conv = copy.get_layer("base").get_layer("conv1")
    if conv.padding != "valid":
        raise ValueError("folding the mean into a padded convolution would change its border")
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel, bias - np.einsum("hwco,c->o", kernel, mean)])
    return copy


def equalize_activations(model, images, batch_size=64):
    """A copy of `model` (made by `galaxy_class.models.build_model`) whose ReLU6 channels are rescaled for int8
    as this module describes, measured on uint8 `images`; its outputs equal the model's up to float rounding on
    images whose activations stay within HEADROOM of those peaks."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    pairs = _relu6_pairs(copy)
    if not pairs:
        return copy
    peaks = _channel_peaks(copy, [bn for bn, _ in pairs], images, batch_size)
    for (bn, consumer), peak in zip(pairs, peaks):
        # Only channels that never reach the clip are scaled, and only up: clipping stays unchanged.
        factor = np.where(peak > 0, RELU6 / (HEADROOM * np.maximum(peak, 1e-12)), 1.0)
        factor = np.clip(factor, 1.0, MAX_FACTOR).astype(np.float32)
        _scale_outputs(bn, factor)
        _scale_inputs(consumer, 1.0 / factor)
    return copy


def _relu6_pairs(model):
    """(BatchNormalization, linear consumer) around each ReLU6 of the model: the consumer is the next
    Conv2D / DepthwiseConv2D (through zero padding) or, after the base's last ReLU6, the Dense head (through
    global average pooling and dropout, which commute with per-channel scaling)."""
    from keras import layers

    base = model.get_layer("base")
    pairs = []
    for relu in base.layers:
        if not (isinstance(relu, layers.ReLU) and relu.max_value is not None and float(relu.max_value) == RELU6):
            continue
        bn = _inbound(relu)
        if not isinstance(bn, layers.BatchNormalization):
            continue
        consumer = _single_outbound(base, relu)
        while isinstance(consumer, layers.ZeroPadding2D):
            consumer = _single_outbound(base, consumer)
        if consumer is None and base.outputs[0] is relu.output:
            consumer = _head(model)
        if isinstance(consumer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)):
            pairs.append((bn, consumer))
    return pairs


def _head(model):
    """The Dense layer reading the base's output through pooling and dropout, or None."""
    from keras import layers

    layer = _single_outbound(model, model.get_layer("base"))
    while isinstance(layer, (layers.GlobalAveragePooling2D, layers.Dropout)):
        layer = _single_outbound(model, layer)
    return layer if isinstance(layer, layers.Dense) else None


def _inbound(layer):
    parents = [p.operation for node in layer._inbound_nodes for p in node.parent_nodes]
    return parents[0] if len(parents) == 1 else None


def _single_outbound(graph, layer):
    """The one layer of functional model `graph` that reads `layer`'s output, or None."""
    readers = [other for other in graph.layers
               if any(p.operation is layer for node in other._inbound_nodes for p in node.parent_nodes)]
    return readers[0] if len(readers) == 1 else None


def _channel_peaks(model, bns, images, batch_size):
    """Each BatchNormalization's largest output per channel over `images` (before its ReLU6 clips it)."""
    import keras

    base = model.get_layer("base")
    probe = keras.Model(base.input, [bn.output for bn in bns])
    to_base = keras.Sequential([model.get_layer(name) for name in _preprocessing(model)])
    peaks = [np.full(bn.output.shape[-1], -np.inf, np.float32) for bn in bns]
    for i in range(0, len(images), batch_size):
        x = to_base(np.asarray(images[i:i + batch_size]), training=False)
        for j, out in enumerate(probe(x, training=False)):
            peaks[j] = np.maximum(peaks[j], np.asarray(out).max(axis=(0, 1, 2)))
    return peaks


def _preprocessing(model):
    """Names of the layers between the model's uint8 input and its base (scaling, resizing)."""
    names, layer = [], _single_outbound(model, model.layers[0])
    while layer is not None and layer.name != "base":
        names.append(layer.name)
        layer = _single_outbound(model, layer)
    return names


def _scale_outputs(bn, factor):
    """BatchNormalization output channel c multiplied by factor[c] (gamma and beta scaled)."""
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * factor, beta * factor, mean, var])


def _scale_inputs(layer, factor):
    """The layer's input channel c multiplied by factor[c], by scaling the weights that read it."""
    from keras import layers

    weights = layer.get_weights()
    # Conv2D kernels are (h, w, in, out), DepthwiseConv2D ones (h, w, channels, multiplier), Dense ones (in, out).
    shape = (-1, 1) if isinstance(layer, layers.Dense) else (1, 1, -1, 1)
    layer.set_weights([weights[0] * factor.reshape(shape), *weights[1:]])


def int8_weights(kernel, axis):
    """`kernel` rounded as TFLite's per-channel int8 does it: symmetric, one scale per index of `axis`."""
    other = tuple(i for i in range(kernel.ndim) if i != axis % kernel.ndim)
    scale = np.abs(kernel).max(axis=other, keepdims=True) / 127
    return np.round(kernel / np.where(scale > 0, scale, 1)) * scale


def correct_bias(model, images):
    """A copy of `model` for int8 export: its convolutions followed by BatchNormalization carry their int8-rounded
    kernels, and each BatchNormalization's mean is moved so that, on `images`, every channel's average before
    ReLU6 is the float model's, with the rounding of the kernels and of the ReLU6 outputs before it included
    (empirical bias correction, Nagel et al. 2019). The base must be a chain of layers, as MobileNet v1 is."""
    import keras
    from keras import layers

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    base, float_base = copy.get_layer("base"), model.get_layer("base")
    x = keras.Sequential([copy.get_layer(name) for name in _preprocessing(copy)])(images, training=False)
    float_x = x = _fake_quant(x, float(np.min(x)), float(np.max(x)))
    for layer, float_layer in zip(base.layers[1:], float_base.layers[1:]):
        if _inbound(layer) is None:
            raise ValueError(f"{layer.name}: bias correction needs a base made of one chain of layers")
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)) and \
                isinstance(_single_outbound(base, layer), layers.BatchNormalization):
            weights = layer.get_weights()
            axis = 2 if isinstance(layer, layers.DepthwiseConv2D) else 3
            layer.set_weights([int8_weights(weights[0], axis), *weights[1:]])
            float_x, x = float_layer(float_x), layer(x)
            bn = _single_outbound(base, layer)
            gamma, beta, mean, var = bn.get_weights()
            shift = np.asarray(x).mean(axis=(0, 1, 2)) - np.asarray(float_x).mean(axis=(0, 1, 2))
            bn.set_weights([gamma, beta, mean + shift, var])
            continue
        float_x, x = float_layer(float_x, training=False), layer(x, training=False)
        if isinstance(layer, layers.ReLU) and layer.max_value is not None:
            x = _fake_quant(x, 0.0, float(layer.max_value))
    return copy


def _fake_quant(x, low, high):
    """`x` rounded to the 256 levels an int8 tensor with range [low, high] holds."""
    step = (high - low) / 255
    return np.clip(np.round((np.asarray(x) - low) / step), 0, 255) * step + low
