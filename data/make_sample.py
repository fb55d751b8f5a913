"""Write data/gz1_sdss_sample.h5: a seeded, stratified subset of the shared real SDSS dev file.

    python data/make_sample.py            # from ../shared/data/gz1_sdss_dev.h5, as committed
"""

import argparse
from pathlib import Path

import h5py
import numpy as np

from galaxy_class import cutout
from galaxy_class.data import REPO_ROOT, SAMPLE_PATH, open_galaxy10, read_images

DEV_FILE = REPO_ROOT.parent / "shared" / "data" / "gz1_sdss_dev.h5"


def pick(labels: np.ndarray, n: int, min_per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of n images: each class in proportion, but at least min_per_class (taken from the largest)."""
    counts = np.bincount(labels)
    quota = np.minimum(np.maximum(np.round(n * counts / counts.sum()), min_per_class), counts).astype(int)
    quota[counts.argmax()] -= quota.sum() - n
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in enumerate(quota)]
    return np.sort(np.concatenate(chosen))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEV_FILE)
    parser.add_argument("--out", type=Path, default=SAMPLE_PATH)
    parser.add_argument("-n", type=int, default=1536, help="number of images")
    # Mergers are 1.7% of the dev file: a proportional sample would leave about 3 in val and in test.
    parser.add_argument("--min-per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    g = open_galaxy10(args.source)
    chosen = pick(g.labels, args.n, args.min_per_class, args.seed)
    with h5py.File(args.source, "r") as src:
        objid = src["objid"][chosen]
        source_note = src.attrs["source"]
        recipe = src.attrs[cutout.ATTRIBUTE]  # the subset was cut from raw cutouts exactly as its source was
    with h5py.File(args.out, "w") as out:
        # Same layout as the dev file: gzip, one chunk per image, so a batch reads only its own images.
        out.create_dataset(
            "images", data=read_images(g, chosen), chunks=(1, *g.image_shape), compression="gzip", compression_opts=4
        )
        out.create_dataset("ans", data=g.labels[chosen].astype(np.uint8))
        out.create_dataset("objid", data=objid)
        out.attrs["class_names"] = list(g.class_names)
        cutout.write_recipe(out, cutout.CutoutRecipe.from_value(recipe, args.source))
        out.attrs["source"] = (
            f"seeded stratified subset (seed {args.seed}, {args.n} of {g.n} images, at least {args.min_per_class} "
            f"per class) of {args.source.name}: {source_note}"
        )
    counts = np.bincount(g.labels[chosen], minlength=len(g.class_names))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB):", dict(zip(g.class_names, counts.tolist())))


if __name__ == "__main__":
    main()
