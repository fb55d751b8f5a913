"""Small random shifts, zooms and colour changes of training images, beside the 8 flips and rotations.

The random numbers are drawn with numpy from the same generator that shuffles the data and picks each image's
flip (batches.make_dataset), so a run is repeatable and a resumed run sees the same images as an uninterrupted
one; TensorFlow applies them (keras.ops.image.affine_transform) as the batches stream into the model.
"""

from __future__ import annotations

import numpy as np

# Per image: x shift, y shift (shares of the width and height), zoom, then one brightness factor per channel.
PARAMETERS = 6


def draw(rng: np.random.Generator, n: int, shift_zoom: float, colour: float) -> np.ndarray:
    """(n, PARAMETERS) float32: shifts uniform in +-shift_zoom, zoom factors uniform in 1 +- shift_zoom, and
    each channel's brightness factor uniform in 1 +- colour. Draws nothing for a strength of 0, so runs
    without it keep the random numbers they always had."""
    params = np.zeros((n, PARAMETERS), np.float32)
    params[:, 2:] = 1.0
    if shift_zoom:
        params[:, :2] = rng.uniform(-shift_zoom, shift_zoom, size=(n, 2))
        params[:, 2] = 1.0 + rng.uniform(-shift_zoom, shift_zoom, size=n)
    if colour:
        params[:, 3:] = 1.0 + rng.uniform(-colour, colour, size=(n, 3))
    return params


def apply(images, params):
    """uint8 images (b, H, W, 3) moved, zoomed about their centre and rescaled per channel by `params` (from
    `draw`), as uint8 (tf tensors). Edges are filled by reflection: sky continues into sky."""
    import keras
    import tensorflow as tf

    height, width = float(images.shape[1]), float(images.shape[2])
    dx, dy, zoom = params[:, 0] * width, params[:, 1] * height, params[:, 2]
    # affine_transform maps each output pixel to the input point it samples: (x - c) / zoom + c - shift.
    cx, cy = (width - 1) / 2, (height - 1) / 2
    zeros = tf.zeros_like(zoom)
    transform = tf.stack([1 / zoom, zeros, cx - cx / zoom - dx,
                          zeros, 1 / zoom, cy - cy / zoom - dy, zeros, zeros], axis=1)
    moved = keras.ops.image.affine_transform(tf.cast(images, tf.float32), transform, fill_mode="reflect")
    scaled = moved * params[:, None, None, 3:]
    return tf.cast(tf.clip_by_value(tf.round(scaled), 0, 255), tf.uint8)
