"""Temperature scaling fitted two ways, against the ECE that chance alone gives on as many galaxies.

    python benchmarks/calibration.py runs/mobilenet_dev runs/squeezenet_dev

For each run folder: the probabilities of every view of its validation and test galaxies (the run's own
temperature undone, so they are the uncalibrated model's), then the test split's ECE (15 bins) and log-loss of
the 8-view mean (a) uncalibrated, (b) with a temperature fitted on the validation split's one-view
probabilities (what runs did before), (c) fitted on the validation split's 8-view means,
(d) fitted on the validation split's 8-view means and kept only if it lowers the log-loss of validation
galaxies left out of its fit (`calibration.choose_temperature`, what runs do now), (e) fitted on the test split
itself (the best one temperature can do there, for reference), and (f) the ECE that perfectly calibrated
probabilities would show on this many galaxies by chance alone.

A second table gives what `predict` reports with the run's own temperature: by default the 8-view mean, with
--one-view a single view.
"""

import argparse
import json
import os
from pathlib import Path

from galaxy_class import calibration

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def views_of(run_dir):
    """{split: (views (8, n, K) uncalibrated, labels)} for the run's validation and test splits."""
    from galaxy_class.data import open_galaxy10
    from galaxy_class.predict import graph_mode, predict_file_views
    from galaxy_class.runs import load_run

    model, config, split = load_run(run_dir)
    temperature = json.loads((Path(run_dir) / "calibration.json").read_text())["temperature"]
    g = open_galaxy10(config.data_path or config.data)
    out = {}
    for part in ("val", "test"):
        views, labels = predict_file_views(graph_mode(model), g, split[part], tta=True)
        out[part] = calibration.with_temperature(views, 1 / temperature), labels
    return temperature, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    args = parser.parse_args(argv)
    print("| run | test galaxies | temperature fitted on | T | ECE, 8-view mean | log-loss |")
    print("|---|---:|---|---:|---:|---:|")
    saved = {}
    for run_dir in args.run_dirs:
        run_temperature, parts = views_of(run_dir)
        (val, val_labels), (test, test_labels) = parts["val"], parts["test"]
        saved[run_dir] = calibration.with_temperature(test, run_temperature), test_labels
        fits = [("none (uncalibrated)", 1.0), ("validation, one view", calibration.fit_temperature(val[0], val_labels)),
                ("validation, 8-view mean", calibration.fit_temperature(val, val_labels)),
                ("validation, 8-view mean, kept if it holds up on left-out galaxies",
                 calibration.choose_temperature(val, val_labels)[0]),
                ("test itself (reference)", calibration.fit_temperature(test, test_labels))]
        for label, t in fits:
            probs = calibration.with_temperature(test, t).mean(axis=0)
            s = calibration.scores(probs, test_labels)
            print(f"| {run_dir.name} | {len(test_labels)} | {label} | {t:.2f} | {s['ece']:.3f} | {s['log_loss']:.3f} |")
        probs = calibration.with_temperature(test, fits[2][1]).mean(axis=0)
        mean, p5, p95 = calibration.chance_ece(probs)
        print(f"| {run_dir.name} | {len(test_labels)} | perfectly calibrated, by chance | | {mean:.3f} "
              f"({p5:.3f}-{p95:.3f}) | |")
    print()
    print("| run | test galaxies | predict's output | mean confidence | accuracy | ECE | log-loss |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for run_dir, (views, labels) in saved.items():
        for label, probs in (("default: mean of 8 views", views.mean(axis=0)), ("--one-view", views[0])):
            s = calibration.scores(probs, labels)
            print(f"| {run_dir.name} | {len(labels)} | {label} | {probs.max(axis=1).mean():.3f} | "
                  f"{(probs.argmax(axis=1) == labels).mean():.3f} | {s['ece']:.3f} | {s['log_loss']:.3f} |")


if __name__ == "__main__":
    main()
