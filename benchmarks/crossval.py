"""A cross-validated estimate of each recipe: stratified k-fold, every galaxy a test galaxy exactly once.

    python benchmarks/crossval.py --data ../shared/data/gz1_sdss_dev.h5 --folds 5 \
        --recipe mobilenet:model=mobilenet --recipe squeezenet:model=squeezenet

Fold k of `--folds` stratified folds (seeded by `--seed`) is the test split of run `runs/crossval/NAME-fK`;
its validation split (early stopping, the temperature) is `val_fraction` of the file, carved from the other
folds, and the rest trains. A finished run is reused. Printed per recipe: each fold's test accuracy, macro-F1
and log-loss (8 views, calibrated), then their mean and standard deviation over the folds, and the pooled
scores of all folds together (every galaxy of the file once).
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from recipes import parse_recipe, pooled, run_recipe  # noqa: E402  (benchmarks/recipes.py)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a Galaxy10-schema HDF5 file")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seeds the folds and the training")
    parser.add_argument("--recipe", action="append", required=True, metavar="NAME:K=V,...")
    parser.add_argument("--root", default="runs/crossval", help="where the runs go")
    parser.add_argument("--rare", default="Merger", help="the class whose finds get their own column")
    args = parser.parse_args(argv)
    summary = []
    for name, settings in map(parse_recipe, args.recipe):
        results = [run_recipe(f"{name}-f{k}", {**settings, "cv_folds": args.folds, "cv_fold": k}, args.data,
                              args.seed, args.root) for k in range(args.folds)]
        print(f"\n{name}: | fold | test galaxies | accuracy | macro-F1 | log-loss | {args.rare}s found | minutes |")
        for k, r in enumerate(results):
            s = r["per_class"].get(args.rare, {})
            print(f"| {k} | {r['n']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['log_loss']:.3f} | "
                  f"{round(s.get('recall', 0) * s.get('support', 0))} / {s.get('support', 0)} | "
                  f"{r['seconds'] / 60:.1f} |", flush=True)
        values = {key: np.array([r[key] for r in results]) for key in ("accuracy", "macro_f1", "log_loss")}
        p = pooled(results, list(results[0]["per_class"]))
        found, n = p["found"].get(args.rare, (0, 0))
        summary.append((name, values, p, f"{found} / {n}", np.mean([r["seconds"] for r in results]) / 60))
    print(f"\n| recipe | folds | accuracy | macro-F1 | log-loss | pooled accuracy / macro-F1 | {args.rare}s found | "
          f"minutes per fold |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, values, p, found, minutes in summary:
        spread = {k: f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" for k, v in values.items()}
        print(f"| {name} | {args.folds} | {spread['accuracy']} | {spread['macro_f1']} | {spread['log_loss']} | "
              f"{p['accuracy']:.3f} / {p['macro_f1']:.3f} | {found} | {minutes:.1f} |")
    print("\nmean ± standard deviation over the folds; pooled: the confusion matrices of all folds summed")
    return summary


if __name__ == "__main__":
    main()
