"""What the two notebooks need beyond training: where a run writes, what runs it, and what its numbers mean."""

import csv
import html
import io
import re
from pathlib import Path

import numpy as np

from galaxy_class import cutout, plots
from galaxy_class.calibration import describe_temperature
from galaxy_class.errors import GalaxyClassError
from galaxy_class.images import image_files, read_rgb, run_recipe

SCRATCH = Path("runs") / "quick"  # quick mode's folders: git ignores runs/, and they never hold a real run
DRIVE = Path("/content/drive")


def folders(models_dir=None, figures_dir=None, quick=False, drive=False):
    """(models folder, figures folder) for a notebook run.

    Defaults: models/ and figures/, or scratch folders under runs/quick/ in quick mode, so a smoke run never
    touches the committed figures or a real run. `drive` (Colab) keeps the run folders on Google Drive,
    where a run cut off with the runtime finds its unfinished run and resumes it.
    """
    models = Path(models_dir) if models_dir else (SCRATCH / "models" if quick else Path("models"))
    figures = Path(figures_dir) if figures_dir else (SCRATCH / "figures" if quick else Path("figures"))
    if drive:
        try:
            from google.colab import drive as colab_drive
        except ImportError:
            raise GalaxyClassError("drive=True keeps runs on Google Drive and works on Colab only") from None
        colab_drive.mount(str(DRIVE))
        models = DRIVE / "MyDrive" / "galaxy-class" / models
    models.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    return models, figures


def environment():
    """One line: the TensorFlow and Keras versions, and the GPU in use or that there is none."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
        where = f"on the GPU {name}" + (f" and {len(gpus) - 1} more" if len(gpus) > 1 else "")
    else:
        where = "on the CPU (no GPU found)"
    return f"TensorFlow {tf.__version__}, Keras {keras.__version__}, running {where}"


def majority_baseline(labels, num_classes):
    """(accuracy, macro-F1) of always answering the commonest class of `labels`."""
    share = np.bincount(labels, minlength=num_classes).max() / len(labels)
    return float(share), float(2 * share / (1 + share) / num_classes)


DATA_NAMES = {"sample": "the bundled sample (real SDSS galaxies, Galaxy Zoo 1 labels: not Galaxy10)",
              "galaxy10_decals": "Galaxy10 DECaLS", "galaxy10_sdss": "Galaxy10 SDSS"}


def data_note(dataset, g):
    """The note under a notebook's introduction: which data its outputs come from, and how to get Galaxy10's."""
    classes = ", ".join(g.class_names)
    what = f"{g.n:,} galaxies of {g.image_shape[0]}x{g.image_shape[1]} pixels in {len(g.class_names)} classes ({classes})"
    if dataset in ("galaxy10_decals", "galaxy10_sdss"):
        return Rendered(f"**The outputs below come from {DATA_NAMES[dataset]}**: {what}.")
    name = "the bundled sample" if dataset == "sample" else f"`{Path(str(dataset)).name}`"
    if dataset == "sample":
        what = what.replace(" galaxies of", " real SDSS galaxies with Galaxy Zoo 1 labels, cutouts of")
    return Rendered(f"**The outputs below come from {name}**: {what}. They are not Galaxy10 results: for "
                    f"Galaxy10 set `dataset = \"galaxy10_decals\"` (or `\"galaxy10_sdss\"`) in the parameters cell, "
                    f"or run `make run DATASET=galaxy10_decals`.")


class Rendered:
    """Markdown text that a notebook shows as HTML too, which every notebook viewer renders (GitHub included).

    The HTML knows what this package writes: paragraphs, pipe tables, **bold** and `code`."""

    def __init__(self, text):
        self.text = text

    def _repr_markdown_(self):
        return self.text

    def _repr_html_(self):
        return "\n".join(_table(block) if block.startswith("|") else f"<p>{_inline(block)}</p>"
                         for block in self.text.strip().split("\n\n"))

    def __str__(self):
        return self.text


def _inline(text):
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _table(block):
    header, rule, *rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
                           for line in block.splitlines()]
    align = ["right" if cell.endswith(":") else "left" for cell in rule]

    def row(cells, tag):
        return "<tr>" + "".join(f'<{tag} style="text-align: {a}">{_inline(c)}</{tag}>'
                                for c, a in zip(cells, align)) + "</tr>"

    return "<table>\n" + "\n".join([row(header, "th"), *(row(r, "td") for r in rows)]) + "\n</table>"


def as_jpeg(fig, quality=85, dpi=100):
    """A figure of galaxy images shown as a JPEG, a fraction of the size of the PNG a notebook would store."""
    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=dpi, pil_kwargs={"quality": quality})
    return Image(data=buffer.getvalue(), format="jpeg")


def results_markdown(metrics, test_labels, dataset):
    """The closing "Results" summary of a notebook: the numbers, against the majority-class baseline, and their limits."""
    data_name = DATA_NAMES.get(dataset, f"`{Path(dataset).name}`")
    names = metrics["class_names"]
    n = metrics["n"]
    base_accuracy, base_f1 = majority_baseline(np.asarray(test_labels), len(names))
    views = "the mean over 8 flips and rotations of each galaxy" if metrics.get("tta") else "one view of each galaxy"
    lines = [
        f"**{n} test galaxies of {data_name}, never seen in training or early stopping.** "
        f"Accuracy **{metrics['accuracy']:.3f}** and macro-F1 **{metrics['macro_f1']:.3f}** from {views}"
        + (f" (one view: {metrics['one_view']['accuracy']:.3f} and {metrics['one_view']['macro_f1']:.3f})"
           if "one_view" in metrics and metrics.get("tta") else "") + ".",
        "",
        f"Always answering the commonest class would score accuracy {base_accuracy:.3f} and macro-F1 "
        f"{base_f1:.3f}: accuracy alone flatters a model on classes this unequal, so macro-F1 (the mean of the "
        "per-class F1 scores, each class counting the same) is the number to watch.",
        "",
        "| class | test galaxies | recall | precision |",
        "|---|---:|---:|---:|",
    ]
    per_class = metrics["per_class"]
    lines += [f"| {name} | {s['support']} | {s['recall']:.2f} | {s['precision']:.2f} |" for name, s in per_class.items()]
    present = [name for name in names if per_class[name]["support"]]
    weakest = min(present, key=lambda name: (per_class[name]["recall"], per_class[name]["support"]))
    share = per_class[weakest]["support"] / n
    lines += [
        "",
        f"The weakest class is **{weakest}**: recall {per_class[weakest]['recall']:.2f} on "
        f"{per_class[weakest]['support']} test galaxies ({share:.1%} of the test split). Rare classes give the "
        "model few examples to learn from, and their scores rest on a handful of galaxies.",
    ]
    if "calibration" in metrics:
        cal = metrics["calibration"]
        lines += ["", f"Probabilities ({describe_temperature(cal)}): the expected calibration error on the test "
                      f"split is {metrics['ece']:.3f}, "
                      f"against {cal['test_before']['ece']:.3f} before; log-loss {metrics['log_loss']:.3f} "
                      f"({cal['test_before']['log_loss']:.3f} before)."]
        if "ece_if_calibrated" in metrics:
            chance = metrics["ece_if_calibrated"]
            lines[-1] += (f" Even perfectly calibrated probabilities would show an ECE of about {chance['mean']:.3f} "
                          f"on {n} galaxies (5-95%: {chance['p5']:.3f}-{chance['p95']:.3f}), so read differences "
                          "below that as noise.")
    lines += [
        "",
        f"How far to trust these numbers: with {n} test galaxies one galaxy moves accuracy by "
        f"{100 / n:.1f} points, and a class with k test galaxies moves its recall by 1/k per galaxy.",
    ]
    return "\n".join(lines)


def classify_cutouts(model, config, folder, tta=False):
    """Classify the image files of `folder` as `predict` does; (results, a figure of the cutouts, the square the
    model sees on each, and its answers). A labels.csv (file, class_name) in the folder adds the true classes."""
    from galaxy_class.predict import classify

    paths = image_files(folder)
    raw = [read_rgb(p) for p in paths]
    recipe = run_recipe(config)
    prepared = [cutout.apply(image, config.input_shape[0], recipe) for image in raw]
    results = classify(model, config.class_names, prepared, [p.name for p in paths], tta=tta)
    fractions = [cutout.crop_fraction_for(min(image.size), config.input_shape[0], recipe)[0] for image in raw]
    labels = None
    if (Path(folder) / "labels.csv").is_file():
        with open(Path(folder) / "labels.csv", newline="") as f:
            known = {row["file"]: row["class_name"] for row in csv.DictReader(f)}
        labels = [known.get(p.name, "?") for p in paths]
    return results, plots.cutouts_figure([np.asarray(image) for image in raw], [image for image, _ in prepared],
                                         results, fractions, labels)
