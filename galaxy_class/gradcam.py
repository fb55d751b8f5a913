"""Grad-CAM (Selvaraju et al. 2017): which parts of a galaxy image raised the model's score for a class.

Each cell's heat is its features times the score's gradients at that cell, summed over the channels (the
element-wise rule of HiResCAM, Draelos & Carin 2020), not times each channel's gradients averaged over the
whole map as in the original: at a layer followed directly by the average pooling every cell has the same
gradients and the two agree; one block earlier they differ from cell to cell, and the average weighs a cell by
what other cells contribute. Each map is averaged over the 8 flips and rotations of the image, each view's
map turned back first, so the explanation turns with the galaxy as the 8-view prediction does
(benchmarks/explanations.py measures why).
"""

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from galaxy_class.batches import dihedral
from galaxy_class.errors import GalaxyClassError
from galaxy_class.predict import predict_proba
from galaxy_class.models import base_model

# The feature map each architecture is explained at; others use their base's output. Every cell of MobileNet's
# last block sees the whole image, and its map books the evidence beside the galaxy; at the block before it the
# maps of held-out dev galaxies sit on the galaxy (benchmarks/README.md, "Grad-CAM: what we tried").
FEATURE_LAYERS = {"mobilenet": "conv_pw_12_relu"}
VIEWS = (1, 8)


def gradcam(model, images, class_index=None, views=8, layer=None):
    """Heatmaps (N, H, W) in [0, 1] for uint8 images (N, H, W, 3): Grad-CAM maps with HiResCAM's element-wise
    weighting, averaged over `views` (8: all flips and rotations, each map turned back; 1: the image as given),
    with negative evidence clipped after the average.

    `class_index`: None for each image's predicted class (mean probability over the views), one int for all
    images, or one per image. `layer`: a layer of the base to explain at (default FEATURE_LAYERS, else its output).
    """
    images = np.asarray(images)
    features, grads = view_gradients(model, images, class_index, views, layer)
    signed = tf.reduce_sum(features * grads, axis=-1, keepdims=True)
    # Clipped after the average: evidence against the class in one view may cancel evidence for it in another.
    cam = tf.nn.relu(tf.reduce_mean(to_image_frame(signed), axis=0))
    return scaled_to_peak(cam, images.shape[1:3])


def view_gradients(model, images, class_index=None, views=8, layer=None):
    """The feature maps at `layer` of each view of a uint8 batch and the gradients of the class scores with
    respect to them, both (views, N, h, w, c); see `gradcam` for the arguments."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise GalaxyClassError(f"gradcam needs a batch of images (N, H, W, 3), got shape {images.shape}")
    if views not in VIEWS:
        raise GalaxyClassError(f"gradcam views={views}: choose one of {VIEWS}")
    if views == 8 and images.shape[1] != images.shape[2]:
        raise GalaxyClassError(f"gradcam over 8 views needs square images, got {images.shape[1]}x{images.shape[2]}")
    before, base, head, last = _layers_around_base(model)
    layer = layer or FEATURE_LAYERS.get(model.name, base.layers[-1].name)
    try:
        features_and_output = keras.Model(base.inputs, [base.get_layer(layer).output, base.output])
    except ValueError:
        raise GalaxyClassError(f"model {model.name!r} has no layer {layer!r} in its base") from None
    n = len(images)
    x = tf.concat([dihedral(tf.convert_to_tensor(images), k) for k in range(views)], axis=0)
    for layer_ in before:
        x = layer_(x, training=False)
    with tf.GradientTape() as tape:
        features, y = features_and_output(x, training=False)
        for layer_ in head:
            y = layer_(y, training=False)
        # The score before softmax, as in the paper: a confident softmax is flat and its gradients vanish.
        logits = keras.ops.matmul(y, last.kernel) + last.bias
        mean_probs = tf.reduce_mean(tf.reshape(tf.nn.softmax(logits), (views, n, -1)), axis=0)
        classes = tf.tile(_class_indices(class_index, mean_probs), [views])
        scores = tf.gather(logits, classes, batch_dims=1)
    # Each image's score depends only on its own features, so one gradient of the sum serves the batch.
    grads = tape.gradient(scores, features)
    shape = (views, n, *features.shape[1:])
    return tf.reshape(features, shape), tf.reshape(grads, shape)


def to_image_frame(maps):
    """Maps (views, N, h, w, 1) of the views made by `view_gradients`, each turned back to the image as given."""
    return tf.stack([dihedral(maps[k], _inverse(k)) for k in range(len(maps))])


def scaled_to_peak(cam, size):
    """Non-negative maps (N, h, w, 1) resized to `size` (H, W), each divided by its peak: (N, H, W) float32."""
    cam = tf.image.resize(cam, size, method="bilinear")[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).astype(np.float32)


def _inverse(k):
    """The dihedral transform that undoes transform k: the opposite quarter turns; a flipped one is a reflection,
    its own inverse."""
    return (4 - k) % 4 if k < 4 else k


def _layers_around_base(model):
    """The preprocessing layers, the base, the head layers and the final Dense, in call order."""
    base = base_model(model)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    *head, last = layers[layers.index(base) + 1:]
    if not isinstance(last, keras.layers.Dense):
        raise GalaxyClassError(f"model {model.name!r}: Grad-CAM needs a Dense output, found {type(last).__name__}")
    return layers[: layers.index(base)], base, head, last


def _class_indices(class_index, probs):
    n, k = probs.shape
    if class_index is None:
        return tf.argmax(probs, axis=1, output_type=tf.int32)
    classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,))
    if classes.min() < 0 or classes.max() >= k:
        raise GalaxyClassError(f"class index {class_index}: the model has classes 0..{k - 1}")
    return tf.constant(classes, dtype=tf.int32)


def overlay(image, heatmap, alpha=0.5, cmap="jet"):
    """A uint8 RGB image with `heatmap` (H, W) in [0, 1] blended in, more opaque where the heat is higher."""
    colours = colormaps[cmap](heatmap)[..., :3] * 255
    weight = alpha * np.asarray(heatmap)[..., None]
    return np.round((1 - weight) * np.asarray(image, dtype=np.float64) + weight * colours).astype(np.uint8)


def colour_bar(width=256, height=12, cmap="jet"):
    """A uint8 RGB strip (height, width, 3) of `overlay`'s colours, from no heat (left) to the map's peak (right)."""
    colours = colormaps[cmap](np.linspace(0, 1, width))[:, :3] * 255
    return np.repeat(np.round(colours).astype(np.uint8)[None], height, axis=0)


def gradcam_figure(model, images, labels, class_names, per_class=4, alpha=0.5, title="", cmap="jet"):
    """The first `per_class` galaxies of each class (a row each) with the Grad-CAM of the predicted class.

    Titles give the predicted class (the one the map explains) and its 8-view probability, green when right and
    red when wrong; a colour bar gives the scale.
    """
    labels = np.asarray(labels)
    chosen = [np.flatnonzero(labels == k)[:per_class] for k in range(len(class_names))]
    indices = np.concatenate(chosen).astype(np.int64)
    if not len(indices):
        raise GalaxyClassError("gradcam_figure: no images given")
    batch = np.asarray(images)[indices]
    probs = predict_proba(model, batch, tta=True)
    heatmaps = gradcam(model, batch, class_index=probs.argmax(axis=1))
    fig = Figure(figsize=(2 * per_class + 0.8, 2.3 * len(class_names)), layout="constrained")
    axes = np.asarray(fig.subplots(len(class_names), per_class, squeeze=False))
    position = 0
    for k, row in enumerate(axes):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(class_names[k], fontsize=9)
            if j >= len(chosen[k]):
                ax.set_frame_on(False)
                continue
            p = probs[position]
            ax.imshow(overlay(batch[position], heatmaps[position], alpha, cmap))
            ax.set_title(f"{class_names[p.argmax()]} {p.max():.0%}", fontsize=8,
                         color="green" if p.argmax() == k else "red")
            position += 1
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes, shrink=0.5,
                 label="Grad-CAM heat (1 = the map's peak)")
    about = "Grad-CAM of the class in each title, averaged over 8 flips and rotations (rows: true class)"
    fig.suptitle(f"{title}: {about}" if title else about, fontsize=10)
    return fig
