"""Honest metrics of predictions: accuracy, macro-F1, per-class scores, confusion matrix, calibration."""

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from galaxy_class import calibration
from galaxy_class.predict import predict_file_views


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
    views, labels = predict_file_views(model, g, indices, batch_size=batch_size, tta=tta)
    probs, one_view = views.mean(axis=0), metrics(labels, views[0], class_names)
    return {**metrics(labels, probs, class_names), "tta": bool(tta),
            "one_view": {"accuracy": one_view["accuracy"], "macro_f1": one_view["macro_f1"]},
            **calibration.scores(probs, labels), "reliability": calibration.reliability(probs, labels),
            "ece_if_calibrated": dict(zip(("mean", "p5", "p95"), calibration.chance_ece(probs)))}


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
            line += (f" ({calibration.describe_temperature(m['calibration'])}; "
                     f"before it: ECE {before['ece']:.3f}, Brier {before['brier']:.3f}, log-loss {before['log_loss']:.3f})")
        lines.append(line)
        if "ece_if_calibrated" in m:
            chance = m["ece_if_calibrated"]
            lines.append(f"perfectly calibrated probabilities would show an ECE of {chance['mean']:.3f} on {m['n']} "
                         f"images by chance (5-95%: {chance['p5']:.3f}-{chance['p95']:.3f})")
    lines += [
        f"{'class (' + views.split(' (')[0] + ')':<32} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>6}"]
    for name, s in m["per_class"].items():
        lines.append(f"{name:<32} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {s['support']:>6}")
    return "\n".join(lines)
