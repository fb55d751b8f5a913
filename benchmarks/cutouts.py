"""Raw cutouts against the file's rows: does a model give a galaxy the same answer either way?

    python benchmarks/cutouts.py RUN_DIR [RUN_DIR ...]
        [--jpegs ../shared/data/gz1_sdss_dev_jpeg --data ../shared/data/gz1_sdss_dev.h5]

For the raw JPEG cutouts of galaxies that are in the HDF5 file (file name = objid), prints side by side:
the mean absolute pixel difference from the file's images when each JPEG is cut by the run's recipe and
when it is shrunk whole (what `predict` did before recipes), and for each run, how often the model's class
on the JPEGs agrees with its class on the file's rows, and its accuracy each way.
"""

import argparse
import csv
from pathlib import Path

import h5py
import numpy as np

from galaxy_class.predict import predict_proba
from galaxy_class.images import load_images
from galaxy_class.runs import load_run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--jpegs", type=Path, default=SHARED / "gz1_sdss_dev_jpeg")
    parser.add_argument("--data", type=Path, default=SHARED / "gz1_sdss_dev.h5")
    args = parser.parse_args()

    with open(args.jpegs / "labels.csv", newline="") as f:
        names = [row["file"] for row in csv.DictReader(f)]
    with h5py.File(args.data, "r") as f:
        where = {int(objid): i for i, objid in enumerate(f["objid"][()])}
        rows = [where[int(Path(n).stem)] for n in names]
        stored = np.stack([f["images"][i] for i in rows])
        labels = f["ans"][()][rows]
    paths = [args.jpegs / n for n in names]
    print(f"{len(paths)} raw cutouts of {args.data.name} galaxies ({args.jpegs})\n")
    print("| run | pixels off, recipe | pixels off, whole image | agreement, recipe | agreement, whole image "
          "| accuracy: rows / recipe / whole |")
    print("|---|---:|---:|---:|---:|---|")
    for run in args.runs:
        model, config, _ = load_run(run)
        cut = np.stack([image for image, _ in load_images(paths, config)])
        whole = np.stack([image for image, _ in load_images(paths, config, crop_fraction=1.0)])
        predicted = {name: predict_proba(model, images, tta=config.tta).argmax(1)
                     for name, images in [("rows", stored), ("recipe", cut), ("whole", whole)]}
        off = {name: np.abs(images.astype(int) - stored).mean() for name, images in [("recipe", cut), ("whole", whole)]}
        agree = {name: np.mean(predicted[name] == predicted["rows"]) for name in ("recipe", "whole")}
        accuracy = " / ".join(f"{np.mean(predicted[name] == labels):.3f}" for name in ("rows", "recipe", "whole"))
        print(f"| {run.name} | {off['recipe']:.2f} | {off['whole']:.2f} | {agree['recipe']:.1%} | "
              f"{agree['whole']:.1%} | {accuracy} |")


if __name__ == "__main__":
    main()
