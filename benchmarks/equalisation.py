"""How far int8 preparation moves the float model: probabilities before and after `quantize.equalize_activations`
(and after bias correction, which is meant to move them), on a run's test galaxies as stored and brightened.

    python benchmarks/equalisation.py models/mobilenet_gz1 [--brighten 1.5]

Equalisation scales a ReLU6 channel up by as much as leaves its peak on the calibration images (the 300 training
images `export` uses) 1.5 times below the clip, and the next layer's weights down by the same factor. On any
image whose activations stay within that headroom the float model is unchanged up to rounding; an image that
drives a scaled channel further is clipped where the original was not. Printed: the largest and the mean
absolute change of any probability (one view), and the share of galaxies whose class changes.
"""

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    from galaxy_class.batches import dihedral
    from galaxy_class.data import open_galaxy10, read_images
    from galaxy_class.export import CALIBRATION_IMAGES, calibration_set
    from galaxy_class.predict import predict_proba
    from galaxy_class.quantize import correct_bias, equalize_activations
    from galaxy_class.runs import load_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--brighten", type=float, default=1.5, help="factor for the brightened copies")
    args = parser.parse_args(argv)
    model, config, split = load_run(args.run_dir)
    g = open_galaxy10(config.data_path or config.data)
    calibration = calibration_set(g, split["train"], CALIBRATION_IMAGES, config.seed)
    equalized = equalize_activations(model, np.concatenate([dihedral(calibration, k) for k in range(8)]))
    corrected = correct_bias(equalized, calibration)
    test = read_images(g, split["test"])
    brightened = np.clip(test.astype(np.float32) * args.brighten, 0, 255).astype(np.uint8)
    print("| images | model | largest change of a probability | mean change | class changed |")
    print("|---|---|---:|---:|---:|")
    for name, images in [(f"{len(test)} test galaxies", test), (f"the same, brightened {args.brighten}x", brightened)]:
        before = predict_proba(model, images)
        for label, other in [("equalised", equalized), ("equalised and bias-corrected", corrected)]:
            after = predict_proba(other, images)
            change = np.abs(after - before)
            print(f"| {name} | {label} | {change.max():.1e} | {change.mean():.1e} | "
                  f"{np.mean(after.argmax(1) != before.argmax(1)):.1%} |", flush=True)


if __name__ == "__main__":
    main()
