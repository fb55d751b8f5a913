"""How closely trained runs fit the galaxies they learned from: accuracy and macro-F1 on each split, side by side.

    python benchmarks/fit.py runs/recipes/mobilenet-s0 runs/recipes/squeezenet-s0

For each run folder: the Keras model's scores (the 8-view mean where the run evaluates with it, as its reported
numbers) on its own training, validation and test galaxies, unaugmented. A model that scores on its training
galaxies hardly above its held-out ones, and below what another model scores on held-out ones, suggests it is
short of capacity rather than of regularisation (early stopping and class weights hold the fit down too);
one far above its held-out scores overfits.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SPLITS = ("train", "val", "test")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    args = parser.parse_args(argv)

    from galaxy_class.data import open_galaxy10
    from galaxy_class.evaluate import evaluate
    from galaxy_class.runs import load_run

    print("| run | model | " + " | ".join(f"{s} accuracy / macro-F1 (n)" for s in SPLITS) + " | train - test |")
    print("|---|---|" + "---:|" * (len(SPLITS) + 1))
    for run_dir in args.runs_dirs:
        model, config, split = load_run(run_dir)
        g = open_galaxy10(config.data_path or config.data)
        scores = {s: evaluate(model, g, split[s], config.class_names, tta=config.tta) for s in SPLITS}
        cells = [f"{m['accuracy']:.3f} / {m['macro_f1']:.3f} ({m['n']})" for m in scores.values()]
        gap = scores["train"]["accuracy"] - scores["test"]["accuracy"]
        print(f"| {run_dir} | {config.model} | {' | '.join(cells)} | {100 * gap:+.1f} points |", flush=True)


if __name__ == "__main__":
    main()
