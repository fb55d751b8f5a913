"""Probabilities that mean what they say: temperature scaling (Guo et al. 2017) and the numbers that check it.

A network trained with cross-entropy tends to be over- or under-confident. Dividing its logits by one
temperature T, fitted on the validation split, keeps the class of every one-view prediction and makes "0.8"
right about 80% of the time. T is fitted to the probabilities the run reports: with test-time augmentation,
the mean over the 8 views (averaging views already softens them, so a T fitted on one view over-softens the
mean). T is folded into the final Dense layer (weights / T), so every consumer of the saved model — evaluate,
predict, catalogues, the web page, TFLite exports — gets calibrated probabilities.

On a small validation split a fitted temperature can make held-out calibration worse; `choose_temperature`
keeps it only where it lowers the log-loss of validation galaxies left out of its fit by more than one
standard error (benchmarks/temperature_rules.py measures the rules side by side).

ECE measured on a few hundred galaxies is noisy and biased upwards: even perfectly calibrated probabilities
show an ECE well above zero there. `chance_ece` gives that level, to read a measured ECE against.
"""

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import log_loss

BINS = 15
_TINY = 1e-12


def with_temperature(probs, temperature):
    """Softmax probabilities (..., K) recomputed with their logits divided by `temperature`."""
    logits = np.log(np.clip(probs, _TINY, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def fit_temperature(probs, labels):
    """The temperature that minimises the log-loss on integer `labels` of `probs`: (n, K) of one view, or
    (views, n, K) of several, whose mean is then what is scored (each view rescaled, then averaged)."""
    labels = np.asarray(labels)
    views = probs if probs.ndim == 3 else probs[None]

    def nll(log_t):
        p = with_temperature(views, np.exp(log_t)).mean(axis=0)
        return -np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], _TINY, 1.0)))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def choose_temperature(probs, labels, folds=5, seed=0, standard_errors=1.0):
    """The temperature fitted on all of `probs` (as `fit_temperature`), or 1 where that fit does not hold up:
    refitted on all but one of `folds` parts of the galaxies in turn, it must lower the log-loss of the galaxies
    left out by more than `standard_errors` standard errors of that gain (over galaxies). A small validation
    split can pull a temperature away from 1 by chance. Returns (temperature, details for calibration.json)."""
    from sklearn.model_selection import KFold

    labels = np.asarray(labels)
    views = probs if probs.ndim == 3 else probs[None]
    fitted = fit_temperature(views, labels)
    if len(labels) < 2 * folds:
        return 1.0, {"fitted": fitted, "kept": False, "why": f"fewer than {2 * folds} galaxies to check it on"}
    gain = np.zeros(len(labels))  # per galaxy: its log-loss left out of the fit, without minus with temperature
    for rest, part in KFold(folds, shuffle=True, random_state=seed).split(labels):
        t = fit_temperature(views[:, rest], labels[rest])
        for temperature, sign in ((1.0, 1), (t, -1)):
            p = with_temperature(views[:, part], temperature).mean(axis=0)
            gain[part] -= sign * np.log(np.clip(p[np.arange(len(part)), labels[part]], _TINY, 1.0))
    error = gain.std(ddof=1) / np.sqrt(len(gain))
    kept = gain.mean() > standard_errors * error
    return (fitted if kept else 1.0), {
        "fitted": fitted, "kept": bool(kept), "left_out_gain": float(gain.mean()), "standard_error": float(error),
        "standard_errors": standard_errors, "folds": folds}


def describe_temperature(calibrated):
    """What calibration.json's temperature is, in a few words."""
    check = calibrated.get("check", {})
    if check.get("kept", True):
        return f"temperature {calibrated['temperature']:.2f}, fitted on the validation split"
    if "why" in check:
        return f"no temperature: {check['why']}"
    return (f"no temperature: T = {check['fitted']:.2f} fitted on the validation split did not lower the log-loss "
            f"of validation galaxies left out of its fit by more than chance")


def apply_temperature(model, temperature):
    """Divide the logits of a `build_model` classifier by `temperature`, in place (final Dense layer / T)."""
    dense = model.get_layer("probabilities")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / temperature, bias / temperature])


def reliability(probs, labels, bins=BINS):
    """Per confidence bin (equal widths over [0, 1]): mean confidence, accuracy and count of the top class."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean = lambda values: np.divide(np.bincount(which, values, bins), count, out=np.zeros(bins), where=count > 0)  # noqa: E731
    return {"confidence": mean(confidence).tolist(), "accuracy": mean(correct.astype(float)).tolist(),
            "count": count.tolist()}


def ece(probs, labels, bins=BINS):
    """Expected calibration error of the top class: the count-weighted gap between confidence and accuracy."""
    table = reliability(probs, labels, bins)
    gaps = np.abs(np.asarray(table["accuracy"]) - table["confidence"])
    return float(np.sum(np.asarray(table["count"]) * gaps) / len(probs))


def scores(probs, labels, bins=BINS):
    """Expected calibration error (top class, `bins` bins), multi-class Brier score and log-loss."""
    labels = np.asarray(labels)
    onehot = np.eye(probs.shape[1])[labels]
    return {"ece": ece(probs, labels, bins), "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
            # int8 TFLite outputs are quantized and sum to one only roughly
            "log_loss": float(log_loss(labels, _normalised(probs), labels=range(probs.shape[1])))}


def chance_ece(probs, bins=BINS, draws=1000, seed=0):
    """The ECE that perfectly calibrated probabilities `probs` (n, K) would show on n galaxies, from `draws`
    label sets drawn from them (seeded): (mean, 5th, 95th percentile)."""
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(_normalised(probs), axis=1)
    eces = []
    for _ in range(draws):
        labels = np.minimum((rng.random((len(probs), 1)) > cumulative).sum(axis=1), probs.shape[1] - 1)
        eces.append(ece(probs, labels, bins))
    return float(np.mean(eces)), float(np.percentile(eces, 5)), float(np.percentile(eces, 95))


def _normalised(probs):
    probs = np.clip(probs, _TINY, 1.0)
    return probs / probs.sum(axis=1, keepdims=True)
