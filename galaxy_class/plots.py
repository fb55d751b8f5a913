"""Figures. Each function returns a matplotlib Figure; the caller shows it or saves it."""

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure


def history_figure(history, title=""):
    """Accuracy and loss, training and validation, across both stages; lines mark where fine-tuning began
    and where a killed or interrupted run was resumed."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric in zip(fig.subplots(1, 2), ["accuracy", "loss"]):
        ax.plot(epochs, history[metric], "o-", ms=3, label="training")
        ax.plot(epochs, history[f"val_{metric}"], "o-", ms=3, label="validation")
        # Histories written before resumes were recorded have no resumed_at_epochs.
        for i, done in enumerate(sorted(set(history.get("resumed_at_epochs", [])))):
            ax.axvline(done + 0.5, color="tab:red", ls=":", label="_nolegend_" if i else "resumed")
        if history["epochs_stage2"] and history["epochs_stage1"]:
            ax.axvline(history["fine_tune_start_epoch"] + 0.5, color="grey", ls="--", label="fine-tuning starts")
        ax.set(xlabel="epoch", ylabel=metric, title=f"{title} {metric}".strip())
        ax.legend()
    return fig


def confusion_figure(confusion, class_names, title=""):
    """The confusion matrix as counts and row-normalised (recall on the diagonal); rows are the true class."""
    confusion = np.asarray(confusion)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    size = 3 + 0.9 * len(class_names)
    fig = Figure(figsize=(2 * size + 1, size), layout="constrained")
    for ax, values, fmt, label in zip(fig.subplots(1, 2), [confusion, normalised], ["d", ".2f"],
                                      ["counts", "fraction of the true class"]):
        sns.heatmap(values, annot=True, fmt=fmt, cmap="Blues", square=True, cbar=False, ax=ax,
                    xticklabels=class_names, yticklabels=class_names)
        ax.set(xlabel="predicted class", ylabel="true class", title=f"{title} ({label})".strip())
        ax.tick_params(axis="x", labelrotation=45)
        ax.tick_params(axis="y", labelrotation=0)
    return fig


def galaxy_grid(images, labels, class_names, predictions=None, ncols=6, title=""):
    """Galaxies with their true class and, if given, the predicted one; mistakes in red."""
    nrows = int(np.ceil(len(images) / ncols))
    fig = Figure(figsize=(2 * ncols, 2.2 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i])
        text, colour = class_names[labels[i]], "black"
        if predictions is not None:
            wrong = predictions[i] != labels[i]
            text = f"true: {class_names[labels[i]]}\npred: {class_names[predictions[i]]}"
            colour = "red" if wrong else "green"
        ax.set_title(text, fontsize=8, color=colour)
    if title:
        fig.suptitle(title)
    return fig


def class_counts_figure(class_names, counts, title="Images per class"):
    """A horizontal bar per class: how imbalanced the data set is."""
    fig = Figure(figsize=(7, 0.5 * len(class_names) + 1), layout="constrained")
    ax = fig.subplots()
    ax.barh(class_names, counts)
    ax.invert_yaxis()
    for y, c in enumerate(counts):
        ax.text(c, y, f" {c}", va="center")
    ax.set(xlabel="images", title=title)
    return fig


def cutouts_figure(raw_images, model_inputs, results, crop_fractions, labels=None, title=""):
    """Raw survey cutouts with the square the model sees drawn on them, and below, what the model sees with its answer."""
    from matplotlib.patches import Rectangle

    n = len(raw_images)
    fig = Figure(figsize=(2.2 * n, 4.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(2, n)).reshape(2, n)
    for i, (raw, seen, result, fraction) in enumerate(zip(raw_images, model_inputs, results, crop_fractions)):
        top, bottom = axes[:, i]
        keep = min(raw.shape[:2]) * fraction
        top.imshow(raw)
        top.add_patch(Rectangle(((raw.shape[1] - keep) / 2, (raw.shape[0] - keep) / 2), keep, keep,
                                fill=False, edgecolor="yellow", lw=1))
        top.set_title(f"{raw.shape[1]}x{raw.shape[0]} px cutout", fontsize=8)
        bottom.imshow(seen)
        text = f"{result['class']} {result['probability']:.0%}"
        colour = "black"
        if labels is not None:
            colour = "green" if labels[i] == result["class"] else "red"
            text = f"true: {labels[i]}\npred: {text}"
        bottom.set_title(text, fontsize=8, color=colour)
        top.axis("off")
        bottom.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def reliability_figure(tables, title=""):
    """Reliability diagrams: accuracy against confidence per bin, one panel per {label: calibration.reliability table}.

    A calibrated model's bars follow the diagonal; bins that hold no galaxy are left empty.
    """
    fig = Figure(figsize=(4.6 * len(tables), 4.4), layout="constrained")
    for ax, (label, table) in zip(np.atleast_1d(fig.subplots(1, len(tables))), tables.items()):
        bins = len(table["count"])
        edges = np.linspace(0, 1, bins + 1)
        used = np.asarray(table["count"]) > 0
        ax.bar(edges[:-1][used], np.asarray(table["accuracy"])[used], width=1 / bins, align="edge",
               edgecolor="black", alpha=0.7, label="accuracy in the bin")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.plot(np.asarray(table["confidence"])[used], np.asarray(table["accuracy"])[used], "o", color="C1",
                ms=4, label="mean confidence in the bin")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy",
               title=f"{title} {label}".strip())
        ax.legend(loc="upper left", fontsize=8)
    return fig
