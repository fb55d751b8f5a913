"""Grad-CAM (Selvaraju et al. 2017): which parts of a galaxy image raised the model's score for a class."""

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.figure import Figure

from galaxy_class.errors import GalaxyClassError
from galaxy_class.predict import predict_proba
from galaxy_class.models import base_model


def gradcam(model, images, class_index=None):
    """Heatmaps (N, H, W) in [0, 1] for uint8 images (N, H, W, 3), from the last feature map of the base.

    `class_index`: None for each image's predicted class, one int for all images, or one per image.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise GalaxyClassError(f"gradcam needs a batch of images (N, H, W, 3), got shape {images.shape}")
    before, base, head, last = _layers_around_base(model)
    x = tf.convert_to_tensor(images)
    for layer in before:
        x = layer(x, training=False)
    features = base(x, training=False)
    with tf.GradientTape() as tape:
        tape.watch(features)
        y = features
        for layer in head:
            y = layer(y, training=False)
        # The score before softmax, as in the paper: a confident softmax is flat and its gradients vanish.
        logits = keras.ops.matmul(y, last.kernel) + last.bias
        classes = _class_indices(class_index, logits)
        scores = tf.gather(logits, classes, batch_dims=1)
    # Each image's score depends only on its own features, so one gradient of the sum serves the batch.
    grads = tape.gradient(scores, features)
    weights = tf.reduce_mean(grads, axis=(1, 2))
    cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", features, weights))
    cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).astype(np.float32)


def _layers_around_base(model):
    """The preprocessing layers, the base, the head layers and the final Dense, in call order."""
    base = base_model(model)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    *head, last = layers[layers.index(base) + 1:]
    if not isinstance(last, keras.layers.Dense):
        raise GalaxyClassError(f"model {model.name!r}: Grad-CAM needs a Dense output, found {type(last).__name__}")
    return layers[: layers.index(base)], base, head, last


def _class_indices(class_index, logits):
    n, k = logits.shape
    if class_index is None:
        return tf.argmax(logits, axis=1, output_type=tf.int32)
    classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,))
    if classes.min() < 0 or classes.max() >= k:
        raise GalaxyClassError(f"class index {class_index}: the model has classes 0..{k - 1}")
    return tf.constant(classes, dtype=tf.int32)


def overlay(image, heatmap, alpha=0.5, cmap="jet"):
    """A uint8 RGB image with `heatmap` (H, W) in [0, 1] blended in, more opaque where the heat is higher."""
    colours = colormaps[cmap](heatmap)[..., :3] * 255
    weight = alpha * np.asarray(heatmap)[..., None]
    return np.round((1 - weight) * np.asarray(image, dtype=np.float64) + weight * colours).astype(np.uint8)


def gradcam_figure(model, images, labels, class_names, per_class=4, alpha=0.5, title=""):
    """The first `per_class` galaxies of each class (a row each) with the Grad-CAM of the predicted class.

    Titles give the predicted class and its probability, green when right and red when wrong.
    """
    labels = np.asarray(labels)
    chosen = [np.flatnonzero(labels == k)[:per_class] for k in range(len(class_names))]
    indices = np.concatenate(chosen).astype(np.int64)
    if not len(indices):
        raise GalaxyClassError("gradcam_figure: no images given")
    batch = np.asarray(images)[indices]
    probs = predict_proba(model, batch)
    heatmaps = gradcam(model, batch)
    fig = Figure(figsize=(2 * per_class, 2.3 * len(class_names)), layout="constrained")
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
            ax.imshow(overlay(batch[position], heatmaps[position], alpha))
            ax.set_title(f"{class_names[p.argmax()]} {p.max():.0%}", fontsize=8,
                         color="green" if p.argmax() == k else "red")
            position += 1
    fig.suptitle(title or "Grad-CAM of the predicted class (rows: true class)")
    return fig
