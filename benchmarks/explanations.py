"""Do the Grad-CAM maps sit on the galaxy, and do they depend on what the model learned?

    python benchmarks/explanations.py RUN_DIR [RUN_DIR ...] [--split test] [--limit N] [--candidates]

For the held-out galaxies of each run (its `split.npz`; the file's cutouts are centred on their galaxy), prints
side by side for Grad-CAM as it was (the base's last feature map, the image as given) and as `gradcam` makes
it now: the mean share of each map's heat inside the central disk (radius 1/4 of the image width), the share
of maps whose peak lies inside it, and the same for a flat map. Both explain the same class, the 8-view
prediction. The sanity check of Adebayo et al. (2018) follows: the mean Spearman rank correlation, per
galaxy, between a map and the map of the same model with its top layer, then all its weights, randomised
(seeded); a map that explains the model should change, so low is good. With `--candidates`, also prints
each layer, number of views, weighting of the gradients (averaged over the map per channel as in Grad-CAM,
or element-wise as in HiResCAM, Draelos & Carin 2020, which `gradcam` uses) and clipping rule we tried, and
Grad-CAM++ (Chattopadhyay et al. 2018).
The randomised models' own centrality shows how much of it any map of a centred galaxy gets.
The central disk is a proxy: it rewards maps on the galaxy, not maps on the right part of it.

`gradcam` spreads a feature map's cells evenly over the image. MobileNet pads only at the bottom and right
before each stride of 2, so the geometric centre of each cell's receptive field lies half a cell down and right
of that (15.5 pixels of the 160-pixel input at conv_pw_12). A third row places each cell's heat at that centre
before the views are turned back (`cell_centres`), beside the same computed with the cells spread evenly, and
the line above the table gives, for both placements, the agreement of the 8 views' maps once turned back (mean
correlation over pairs of views, galaxy by galaxy).
"""

import argparse
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from scipy.ndimage import map_coordinates
from scipy.stats import spearmanr

from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.gradcam import FEATURE_LAYERS, gradcam, scaled_to_peak, to_image_frame, view_gradients
from galaxy_class.models import base_model
from galaxy_class.predict import predict_proba
from galaxy_class.runs import load_run

BATCH = 16  # galaxies at a time: 8 views each, and the gradient tape keeps every activation
# Layers tried per architecture, last first; the others are tried at their base's output only.
CANDIDATE_LAYERS = {"mobilenet": ["conv_pw_13_relu", "conv_pw_12_relu", "conv_pw_11_relu"],
                    "squeezenet": ["fire9_concat", "fire8_concat"]}


def central_disk(size):
    """Boolean (H, W) mask of the disk of radius W/4 around the image centre."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= (w / 4) ** 2


def centrality(maps):
    """Mean share of heat in the central disk and share of peaks inside it; an all-zero map counts as flat."""
    disk = central_disk(maps.shape[1:])
    total = maps.sum(axis=(1, 2))
    share = np.where(total > 0, (maps * disk).sum(axis=(1, 2)) / np.maximum(total, 1e-12), disk.mean())
    peaks = disk.ravel()[maps.reshape(len(maps), -1).argmax(axis=1)]
    return share.mean(), peaks.mean()


def batched(fn, images, classes):
    """`fn(images, classes)` over a few galaxies at a time, joined."""
    return np.concatenate([fn(images[i:i + BATCH], classes[i:i + BATCH]) for i in range(0, len(images), BATCH)])


def randomised(model, top_only, seed=0):
    """A copy of `model` with fresh initial weights: only in its output layer, or everywhere."""
    keras.utils.set_random_seed(seed)
    copy = keras.models.clone_model(model)
    if top_only:
        copy.set_weights(model.get_weights())
        dense = copy.layers[-1]
        dense.kernel.assign(dense.kernel_initializer(dense.kernel.shape))
        dense.bias.assign(np.zeros(dense.bias.shape, "float32"))
    return copy


def rank_correlation(a, b):
    """Mean Spearman correlation of paired maps, over the pairs where neither map is constant, and that count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant map has no ranks: it is counted, not averaged
        rho = np.array([spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)])
    finite = np.isfinite(rho)
    return (rho[finite].mean() if finite.any() else float("nan")), int(finite.sum())


def cell_centres(model, layer):
    """Where cell i of the feature map at `layer` is centred in the model's input image: per axis (a, b), at
    pixel a * i + b (0-based pixel centres), from the resizing before the base and the strides, kernels and
    paddings on the way (TensorFlow's "same" pads an even size at the bottom and right only)."""
    base = base_model(model)
    steps = []  # per layer with geometry: per axis (stride, offset), input coordinate = stride * output + offset
    for item in base.layers[:[layer_.name for layer_ in base.layers].index(layer) + 1]:
        if isinstance(item, keras.layers.ZeroPadding2D):
            steps.append([(1, -pad[0]) for pad in item.padding])
        elif isinstance(item, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.MaxPooling2D)):
            size = item.kernel_size if hasattr(item, "kernel_size") else item.pool_size
            dilation = getattr(item, "dilation_rate", (1, 1))
            axis_steps = []
            for axis in range(2):
                stride, kernel = item.strides[axis], (size[axis] - 1) * dilation[axis] + 1
                pad_top = 0
                if item.padding == "same":
                    n_in, n_out = item.input.shape[1 + axis], item.output.shape[1 + axis]
                    pad_top = max((n_out - 1) * stride + kernel - n_in, 0) // 2
                axis_steps.append((stride, (kernel - 1) / 2 - pad_top))
            steps.append(axis_steps)
    grid = []
    for axis in range(2):
        a, b = 1.0, 0.0
        for step in reversed(steps):
            stride, offset = step[axis]
            a, b = stride * a, stride * b + offset
        scale = model.input.shape[1 + axis] / base.input.shape[1 + axis]  # Resizing, with half-pixel centres
        grid.append((a * scale, (b + 0.5) * scale - 0.5))
    return grid


def evenly_spread(cells, size):
    """The grid of `cells` (h, w) spread evenly over an image of `size` (H, W), as `gradcam` places them."""
    return [(n / c, (n / c - 1) / 2) for c, n in zip(cells, size)]


def registered(maps, grid, size):
    """Maps (..., h, w) on the image grid (..., H, W), bilinear between the cells, edges held, each cell at the
    pixel `grid` says."""
    maps = np.asarray(maps, dtype=np.float32)
    (a_row, b_row), (a_col, b_col) = grid
    rows, cols = np.meshgrid((np.arange(size[0]) - b_row) / a_row, (np.arange(size[1]) - b_col) / a_col,
                             indexing="ij")
    flat = [map_coordinates(m, (rows, cols), order=1, mode="nearest") for m in maps.reshape(-1, *maps.shape[-2:])]
    return np.stack(flat).reshape(*maps.shape[:-2], *size)


def view_maps(model, images, classes, geometric):
    """The 8 views' element-wise maps of `gradcam`'s layer on the image grid, turned back: (8, n, H, W)."""
    layer = FEATURE_LAYERS.get(model.name, base_model(model).layers[-1].name)
    features, grads = view_gradients(model, images, classes, 8, layer)
    signed = tf.reduce_sum(features * grads, axis=-1)
    grid = cell_centres(model, layer) if geometric else evenly_spread(signed.shape[2:4], images.shape[1:3])
    return to_image_frame(registered(signed, grid, images.shape[1:3])[..., None]).numpy()[..., 0]


def on_image_grid(geometric):
    """`gradcam` with each view's map placed on the image grid before it is turned back, clipped after the
    average: the cells spread evenly (as `gradcam`, which clips before resizing) or at their geometric centres."""
    def method(model, images, classes):
        cam = tf.nn.relu(tf.reduce_mean(view_maps(model, images, classes, geometric), axis=0))[..., None]
        return scaled_to_peak(cam, images.shape[1:3])
    return method


def view_agreement(model, images, classes, geometric):
    """Mean correlation between the turned-back maps of pairs of views (clipped at 0), galaxy by galaxy."""
    pairs = []
    for i in range(0, len(images), BATCH):
        for views in np.maximum(view_maps(model, images[i:i + BATCH], classes[i:i + BATCH], geometric), 0)\
                .transpose(1, 0, 2, 3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a constant map has no correlation
                r = np.corrcoef(views.reshape(8, -1))[np.triu_indices(8, 1)]
            pairs.append(np.nanmean(r) if np.isfinite(r).any() else np.nan)
    return float(np.nanmean(pairs))


def candidate_map(weighting, clip, features, grads, size):
    """One candidate map from the (views, n, h, w, c) features and gradients of `view_gradients`: channels
    weighted by their gradients averaged over the map (Grad-CAM), element-wise (HiResCAM, Draelos & Carin
    2020: what `gradcam` does) or by Grad-CAM++'s rule; clipped in each view or after averaging the views."""
    if weighting == "element-wise":
        signed = tf.reduce_sum(features * grads, axis=-1)
    else:
        if weighting == "Grad-CAM++":
            # Chattopadhyay et al. (2018), eq. 19, with the exponential of the score as in their code.
            g2, g3 = grads ** 2, grads ** 3
            alpha = tf.math.divide_no_nan(g2, 2 * g2 + tf.reduce_sum(features, axis=(2, 3), keepdims=True) * g3)
            weights = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(2, 3))
        else:
            weights = tf.reduce_mean(grads, axis=(2, 3))
        signed = tf.einsum("vnhwc,vnc->vnhw", features, weights)
    signed = to_image_frame(signed[..., None])
    if clip == "after averaging":
        return scaled_to_peak(tf.nn.relu(tf.reduce_mean(signed, axis=0)), size)
    return scaled_to_peak(tf.reduce_mean(tf.nn.relu(signed), axis=0), size)


def variants(model, images, classes, layer, views):
    """{"weighting, clip ...": maps} for one layer and number of views, every candidate from one pass of
    gradients per batch of galaxies."""
    rules = [("channel means", "each view"), ("element-wise", "each view"), ("Grad-CAM++", "each view")]
    if views > 1:
        rules[2:2] = [("channel means", "after averaging"), ("element-wise", "after averaging")]
    parts = []
    for i in range(0, len(images), BATCH):
        features, grads = view_gradients(model, images[i:i + BATCH], classes[i:i + BATCH], views, layer)
        parts.append([candidate_map(w, c, features, grads, images.shape[1:3]) for w, c in rules])
    return {f"{w}, clip {c}": np.concatenate(maps) for (w, c), maps in zip(rules, zip(*parts))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--limit", type=int, default=0, help="only the first N galaxies of the split")
    parser.add_argument("--candidates", action="store_true", help="also print every layer and rule tried")
    args = parser.parse_args()

    rows = []
    for run in args.runs:
        model, config, split = load_run(run)
        g = open_galaxy10(config.data_path or config.data)
        indices = np.sort(split[args.split])[:args.limit or None]
        images = read_images(g, indices)
        classes = predict_proba(model, images, tta=True).argmax(axis=1)
        last = base_model(model).layers[-1].name
        methods = {f"before: {last}, 1 view": lambda m, x, c: gradcam(m, x, c, views=1, layer=last),
                   "after: `gradcam`": gradcam,
                   "on the image grid, cells spread evenly": on_image_grid(geometric=False),
                   "on the image grid, cells at their receptive fields' geometric centres": on_image_grid(geometric=True)}
        disk = central_disk(images.shape[1:3]).mean()
        rows.append(f"| {run.name} | flat map (peak: a random pixel) | trained | {disk:.3f} | {disk:.3f} | |")
        weights = {"trained": model, "top layer randomised": randomised(model, top_only=True),
                   "all weights randomised": randomised(model, top_only=False)}
        for name, method in methods.items():
            trained = None
            for kind, m in weights.items():
                maps = batched(lambda x, c: method(m, x, c), images, classes)
                heat, peaks = centrality(maps)
                if trained is None:
                    trained, rho = maps, ""
                else:
                    r, n = rank_correlation(trained, maps)
                    rho = f"{r:.2f}" + (f" ({len(maps) - n} maps constant)" if n < len(maps) else "")
                rows.append(f"| {run.name} | {name} | {kind} | {heat:.3f} | {peaks:.3f} | {rho} |")
        print(f"{run.name}: {len(images)} {args.split} galaxies of {g.path.name}; agreement of the 8 views' maps: "
              f"{view_agreement(model, images, classes, geometric=False):.3f} with the cells spread evenly "
              f"(`gradcam`), {view_agreement(model, images, classes, geometric=True):.3f} at their geometric "
              f"centres", flush=True)
        if args.candidates:
            for layer in CANDIDATE_LAYERS.get(config.model, [last]):
                for views in (1, 8):
                    for rule, maps in variants(model, images, classes, layer, views).items():
                        heat, peaks = centrality(maps)
                        print(f"  candidate | {layer} | {views} view{'s' * (views > 1)} | {rule} | "
                              f"{heat:.3f} | {peaks:.3f} |", flush=True)
    print("\n| run | Grad-CAM | weights | heat in central disk | peaks in central disk "
          "| rank correlation with the trained model's maps |")
    print("|---|---|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
