"""Running a trained model on images: a run folder's Keras model or an exported .tflite file, called alike
(uint8 images in, probabilities out), one view or the mean of the 8 flips and rotations."""

from pathlib import Path

import numpy as np

from galaxy_class.batches import dihedral, make_dataset
from galaxy_class.runs import load_run

BATCH_SIZE = 128


def load_model(path):
    """(model, config, split) of a run folder, or of a .tflite file exported from one."""
    if Path(path).suffix == ".tflite":
        from galaxy_class.tflite import load_tflite

        return load_tflite(path)
    return load_run(path)


def graph_mode(model):
    """`model` called through a tf.function, i.e. with the numerics of `fit`, `predict` and the exported file."""
    import tensorflow as tf

    spec = tf.TensorSpec(model.input.shape, model.input.dtype)  # one trace for every batch size
    call = tf.function(lambda images: model(images, training=False), input_signature=[spec])
    return lambda images, training=False: call(images)


def predict_views(model, images, tta=False, batch_size=BATCH_SIZE):
    """Class probabilities of each view of uint8 images, (views, n, K): the images as given, then with `tta`
    their other 7 flips and rotations. The model sees `batch_size` images at a time, as in `model.predict`,
    so memory stays bounded however many images are given."""
    views = range(8) if tta else [0]
    return np.concatenate([np.stack([np.asarray(model(dihedral(images[i:i + batch_size], k), training=False))
                                     for k in views])
                           for i in range(0, max(len(images), 1), batch_size)], axis=1)


def predict_proba(model, images, tta=False, batch_size=BATCH_SIZE):
    """Class probabilities for uint8 images, `batch_size` at a time; with `tta`, the mean over the 8 flips and
    rotations."""
    return predict_views(model, images, tta, batch_size).mean(axis=0)


def predict_file_views(model, g, indices, batch_size=128, tta=False):
    """Probabilities of each view (views, n, K) and true labels (n,) for the images `indices` of a Galaxy10 file,
    streamed: one view, or with `tta` the 8 flips and rotations (the unrotated images first)."""
    views, labels = [], []
    for images, y in make_dataset(g, indices, batch_size):
        views.append(predict_views(model, images, tta=tta))
        labels.append(np.asarray(y))
    return np.concatenate(views, axis=1), np.concatenate(labels)


def predict_file(model, g, indices, batch_size=128, tta=False):
    """Probabilities (n, K) and true labels (n,) for the images `indices` of a Galaxy10 file, streamed; with
    `tta`, the mean over the 8 flips and rotations."""
    views, labels = predict_file_views(model, g, indices, batch_size, tta)
    return views.mean(axis=0), labels


def classify(model, class_names, prepared, names, tta=False, batch_size=64):
    """One result per (image, note) of `images.load_images`: the top class and its probability, every class's
    probability, and how the image was cut; `names` label the results (file names)."""
    probs = predict_proba(model, np.stack([image for image, _ in prepared]), tta=tta, batch_size=batch_size)
    return [{"image": str(name), "class": class_names[int(p.argmax())], "probability": float(p.max()),
             "probabilities": dict(zip(class_names, map(float, p))), "preprocessing": note}
            for name, (_, note), p in zip(names, prepared, probs)]
