"""Training recipes side by side: held-out accuracy, macro-F1, Mergers found and wall time, over seeds.

    python benchmarks/recipes.py --data ../shared/data/gz1_sdss_dev.h5 --seeds 0 1 2 \
        --recipe squeezenet:model=squeezenet --recipe mobilenet:model=mobilenet \
        --recipe balanced:model=mobilenet,class_weight=balanced

Each `--recipe NAME:SETTING=VALUE,...` is the defaults of `galaxy_class/config.py` with those settings
changed; `{seed}` in a value is replaced by the seed (a teacher of the same split:
`distill:model=mobilenet,teacher=runs/recipes/squeezenet-s{seed}`). Every recipe is trained once per seed into `runs/recipes/NAME-sSEED` (a finished run there is
reused, not retrained; its recorded wall time is reported). A seed also draws the stratified split, so the
seeds give different test galaxies: the pooled line sums the confusion matrices of all seeds, which holds
several times the Mergers one test split does (8 on the development file). Under the table, each pooled
line's 95% interval from test-galaxy sampling alone (training noise comes on top). Wall times are of this
machine and of whatever else ran on it: compare them within one table.

Choose between recipes on the validation columns (each run's validation split, scored like its test split);
the test columns then report the chosen recipe on galaxies that took no part in the choice. A choice made on
the test columns makes them the score of a winner on the galaxies that picked it.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_recipe(text):
    """"name:key=value,key=value" -> (name, {key: value}) with values parsed as JSON where they can be."""
    name, _, rest = text.partition(":")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            settings[key.strip()] = json.loads(value)
        except ValueError:
            settings[key.strip()] = value.strip()
    return name, settings


def run_recipe(name, settings, data, seed, root):
    """Train (or reuse) one recipe at one seed; returns its metrics with the training wall time."""
    from galaxy_class.config import Config
    from galaxy_class.runs import run_state, settings_differences
    from galaxy_class.train import train

    run_dir = Path(root) / f"{name}-s{seed}"
    timing = run_dir / "wall_time.json"
    settings = {k: v.format(seed=seed) if isinstance(v, str) else v for k, v in settings.items()}
    config = Config().replace(data=data, seed=seed, **settings)
    if run_state(run_dir) == "finished" and timing.exists():
        differences = settings_differences(Config.load(run_dir / "config.json"), config)
        if differences:
            raise SystemExit(f"error: {run_dir} holds recipe {name} with other settings: {'; '.join(differences)}")
    else:
        start = time.perf_counter()
        train(config, run_dir, overwrite=run_state(run_dir) == "finished", verbose=0)
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}) + "\n")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    return {**metrics, "seconds": json.loads(timing.read_text())["seconds"], "validation": validation(run_dir),
            "epochs": f"{history['epochs_stage1']} + {history['epochs_stage2']}"}


def validation(run_dir):
    """The run's scores on its validation split (as on the test split: its views, calibrated), cached beside it:
    what recipes are chosen on, so that the test split stays untouched by the choice."""
    cached = Path(run_dir) / "validation.json"
    if not cached.exists():
        from galaxy_class.data import open_galaxy10
        from galaxy_class.evaluate import evaluate
        from galaxy_class.predict import graph_mode
        from galaxy_class.runs import load_run

        model, config, split = load_run(run_dir)
        g = open_galaxy10(config.data_path or config.data)
        scores = evaluate(graph_mode(model), g, split["val"], config.class_names, tta=config.tta)
        cached.write_text(json.dumps({k: scores[k] for k in ("n", "accuracy", "macro_f1", "log_loss",
                                                            "confusion_matrix")}) + "\n")
    return json.loads(cached.read_text())


def pooled(results, class_names):
    """Accuracy, macro-F1 and per-class recall of all seeds' test galaxies together."""
    matrix = sum(np.array(r["confusion_matrix"]) for r in results)
    accuracy, macro_f1 = scores(matrix)
    return {"accuracy": accuracy, "macro_f1": macro_f1, "interval": interval(matrix),
            "found": {n: (int(matrix[i, i]), int(matrix[i].sum())) for i, n in enumerate(class_names)}}


def scores(matrix):
    """(accuracy, macro-F1) of a confusion matrix (rows: true class), or of a stack of them."""
    matrix = np.asarray(matrix, dtype=float)
    diagonal = np.diagonal(matrix, axis1=-2, axis2=-1)
    recall = diagonal / np.maximum(matrix.sum(-1), 1)
    precision = diagonal / np.maximum(matrix.sum(-2), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return diagonal.sum(-1) / matrix.sum((-2, -1)), f1.mean(-1)


def interval(matrix, draws=2000, seed=0):
    """95% intervals of accuracy and macro-F1 from test-galaxy sampling alone: the same number of galaxies drawn
    again, with replacement, from the pooled confusion matrix's cells (training noise comes on top). The seeds'
    test splits share some galaxies, so a pooled matrix counts slightly fewer distinct ones than it holds and
    the interval is slightly too narrow."""
    matrix = np.asarray(matrix)
    cells = np.random.default_rng(seed).multinomial(matrix.sum(), matrix.ravel() / matrix.sum(), size=draws)
    accuracy, macro_f1 = scores(cells.reshape(draws, *matrix.shape))
    return np.percentile(accuracy, [2.5, 97.5]), np.percentile(macro_f1, [2.5, 97.5])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a Galaxy10-schema HDF5 file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipe", action="append", required=True, metavar="NAME:K=V,...")
    parser.add_argument("--root", default="runs/recipes", help="where the runs go")
    parser.add_argument("--rare", default="Merger", help="the class whose finds get their own column")
    args = parser.parse_args(argv)

    recipes = [parse_recipe(r) for r in args.recipe]
    rows, intervals = [], []
    for name, settings in recipes:
        results = [run_recipe(name, settings, args.data, seed, args.root) for seed in args.seeds]
        names = list(results[0]["per_class"])
        for seed, r in zip(args.seeds, results):
            s = r["per_class"].get(args.rare, {})
            found = round(s.get("recall", 0) * s.get("support", 0))
            v = r["validation"]
            rows.append((name, str(seed), v["accuracy"], v["macro_f1"], r["accuracy"], r["macro_f1"],
                         f"{found} / {s.get('support', 0)}", r["epochs"], f"{r['seconds'] / 60:.1f} min"))
        if len(results) > 1:
            p = pooled(results, names)
            v = pooled([r["validation"] for r in results], names)
            found, n = p["found"].get(args.rare, (0, 0))
            minutes = np.mean([r["seconds"] for r in results]) / 60
            rows.append((name, "pooled", v["accuracy"], v["macro_f1"], p["accuracy"], p["macro_f1"],
                         f"{found} / {n}", "", f"{minutes:.1f} min (mean)"))
            intervals.append((name, *p["interval"]))
        print_table(rows, args.rare)  # after each recipe, so a long sweep shows what it has so far
        print_intervals(intervals)
    return rows


def print_intervals(intervals):
    if intervals:
        print("\nPooled, 95% intervals from test-galaxy sampling alone (the galaxies drawn again, 2,000 times):")
    for name, (acc_low, acc_high), (f1_low, f1_high) in intervals:
        print(f"  {name}: accuracy {acc_low:.3f}-{acc_high:.3f}, macro-F1 {f1_low:.3f}-{f1_high:.3f}")


def print_table(rows, rare):
    print(f"\n| recipe | seed | validation accuracy | validation macro-F1 | test accuracy | test macro-F1 | "
          f"{rare}s found (test) | epochs | wall time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, seed, val_acc, val_f1, acc, f1, found, epochs, wall in rows:
        print(f"| {name} | {seed} | {val_acc:.3f} | {val_f1:.3f} | {acc:.3f} | {f1:.3f} | {found} | {epochs} | {wall} |",
              flush=True)


if __name__ == "__main__":
    main()
