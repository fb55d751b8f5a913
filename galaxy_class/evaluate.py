"""Predictions and honest metrics: accuracy, macro-F1, per-class scores, confusion matrix."""

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from galaxy_class import calibration
from galaxy_class.data import dihedral, make_dataset


def predict_views(model, images, tta=False):
    """Class probabilities of each view of a uint8 batch, (views, b, K): the images as given, then with `tta`
    their other 7 flips and rotations."""
    return np.stack([np.asarray(model(dihedral(images, k), training=False)) for k in (range(8) if tta else [0])])


def predict_proba(model, images, tta=False):
    """Class probabilities for a uint8 batch; with `tta`, the mean over the 8 flips and rotations."""
    return predict_views(model, images, tta).mean(axis=0)


def predict_file(model, g, indices, batch_size=128, tta=False, first_view=False):
    """Probabilities (n, K) and true labels (n,) for the images `indices` of a Galaxy10 file, streamed;
    with `first_view`, also the probabilities of the unrotated images alone."""
    probs, labels, first = [], [], []
    for images, y in make_dataset(g, indices, batch_size):
        views = predict_views(model, images, tta=tta)
        probs.append(views.mean(axis=0))
        first.append(views[0])
        labels.append(np.asarray(y))
    out = np.concatenate(probs), np.concatenate(labels)
    return (*out, np.concatenate(first)) if first_view else out


def classify(model, class_names, prepared, names, tta=False, batch_size=64):
    """One result per (image, note) of `images.load_images`: the top class and its probability, every class's
    probability, and how the image was cut; `names` label the results (file names)."""
    images = np.stack([image for image, _ in prepared])
    probs = np.concatenate([predict_proba(model, images[i:i + batch_size], tta=tta)
                            for i in range(0, len(images), batch_size)])
    return [{"image": str(name), "class": class_names[int(p.argmax())], "probability": float(p.max()),
             "probabilities": dict(zip(class_names, map(float, p))), "preprocessing": note}
            for name, (_, note), p in zip(names, prepared, probs)]


def metrics(labels, probs, class_names):
    """The numbers we report, as a JSON-ready dict."""
    pred = np.argmax(probs, axis=1)
    k = range(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=k, zero_division=0)
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=k, average="macro", zero_division=0)),
        "class_names": list(class_names),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        # Rows are the true class, columns the predicted one.
        "confusion_matrix": confusion_matrix(labels, pred, labels=k).tolist(),
    }


def evaluate(model, g, indices, class_names, tta=False, batch_size=128):
    """Metrics of `model` on the images `indices` of the Galaxy10 file `g`."""
    probs, labels, first = predict_file(model, g, indices, batch_size=batch_size, tta=tta, first_view=True)
    one_view = metrics(labels, first, class_names)
    return {**metrics(labels, probs, class_names), "tta": bool(tta),
            "one_view": {"accuracy": one_view["accuracy"], "macro_f1": one_view["macro_f1"]},
            **calibration.scores(probs, labels), "reliability": calibration.reliability(probs, labels)}


def report(m):
    """A short text report of `metrics`: accuracy, macro-F1 and per-class scores."""
    views = "mean of 8 views (flips and rotations)" if m.get("tta") else "one view"
    lines = [f"{m['n']} images, {views}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}"]
    if m.get("tta") and "one_view" in m:
        lines.append(f"{m['n']} images, one view: accuracy {m['one_view']['accuracy']:.3f}, "
                     f"macro-F1 {m['one_view']['macro_f1']:.3f}")
    if "ece" in m:
        line = f"probabilities: ECE {m['ece']:.3f}, Brier {m['brier']:.3f}, log-loss {m['log_loss']:.3f}"
        if "calibration" in m:
            before = m["calibration"]["test_before"]
            line += (f" (temperature {m['calibration']['temperature']:.2f}, fitted on the validation split; "
                     f"before it: ECE {before['ece']:.3f}, Brier {before['brier']:.3f}, log-loss {before['log_loss']:.3f})")
        lines.append(line)
    lines += [
        f"{'class (' + views.split(' (')[0] + ')':<32} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>6}"]
    for name, s in m["per_class"].items():
        lines.append(f"{name:<32} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {s['support']:>6}")
    return "\n".join(lines)
