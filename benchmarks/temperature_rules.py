"""Which rule for keeping a temperature works on small validation splits: each rule, side by side, on
validation splits drawn smaller than the run's own, scored on the run's whole test split.

    python benchmarks/temperature_rules.py models/mobilenet_gz1 --sizes 80 150 300 461 --draws 200

For each run folder the uncalibrated 8-view probabilities of its validation and test galaxies are computed
once (benchmarks/calibration.py's `views_of`). Then, `--draws` times for each size n, n validation galaxies
are drawn without replacement and each rule picks a temperature from them alone:

- always: the temperature that minimises their log-loss (`calibration.fit_temperature`);
- left-out check: kept only if refitting it on four fifths lowers the log-loss of the fifth left out, over
  the five (`calibration.choose_temperature` with `standard_errors=0`);
- left-out check by more than a standard error of that gain (`calibration.choose_temperature`, the default);
- at least 300: fitted only when there are at least 300 validation galaxies, else 1;
- none: T = 1.

Each line gives, over the draws, the mean test ECE and log-loss of the 8-view mean and the share of draws in
which the rule made the test log-loss worse than no temperature.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration import views_of  # noqa: E402  (benchmarks/calibration.py)

from galaxy_class import calibration  # noqa: E402

RULES = {
    "always": lambda views, labels: calibration.fit_temperature(views, labels),
    "left-out check": lambda views, labels: calibration.choose_temperature(views, labels, standard_errors=0)[0],
    "left-out check by more than a standard error (the default)":
        lambda views, labels: calibration.choose_temperature(views, labels)[0],
    "at least 300": lambda views, labels: calibration.fit_temperature(views, labels) if len(labels) >= 300 else 1.0,
    "none": lambda views, labels: 1.0,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--sizes", nargs="+", type=int, default=[80, 150, 300, 461])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("| run | validation galaxies | rule | mean T | test ECE | test log-loss | draws worse than none |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for run_dir in args.run_dirs:
        _, parts = views_of(run_dir)
        (val, val_labels), (test, test_labels) = parts["val"], parts["test"]
        none = calibration.scores(test.mean(axis=0), test_labels)["log_loss"]
        rng = np.random.default_rng(args.seed)
        for size in [s for s in args.sizes if s <= len(val_labels)]:
            draws = [rng.choice(len(val_labels), size, replace=False) for _ in range(args.draws)]
            for rule, choose in RULES.items():
                results = []
                for chosen in draws:
                    t = choose(val[:, chosen], val_labels[chosen])
                    scored = calibration.scores(calibration.with_temperature(test, t).mean(axis=0), test_labels)
                    results.append((t, scored["ece"], scored["log_loss"]))
                t, ece, loss = np.array(results).T
                print(f"| {run_dir.name} | {size} | {rule} | {t.mean():.2f} | {ece.mean():.3f} | {loss.mean():.3f} | "
                      f"{np.mean(loss > none + 1e-12):.0%} |", flush=True)


if __name__ == "__main__":
    main()
