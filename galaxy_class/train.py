"""Two-stage training (new head, then fine-tuning) into a run folder that survives being killed."""

import csv
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from galaxy_class import evaluate
from galaxy_class.config import Config, run_config
from galaxy_class.cutout import read_recipe
from galaxy_class.data import load_split, make_dataset, open_galaxy10, save_split, split_indices
from galaxy_class.errors import GalaxyClassError
from galaxy_class.models import base_model, build_model

STAGES = ("stage1", "stage2")
# Everything a run writes; --overwrite removes exactly these, never anything else in the folder.
RUN_FILES = ["config.json", "split.npz", "model.keras", "history.json", "metrics.json",
             *[f"{prefix}{s}{suffix}" for s in STAGES
               for prefix, suffix in [("history_", ".csv"), ("", ".weights.h5"), ("best_", ".weights.h5")]]]


def run_state(run_dir):
    """'new', 'unfinished' or 'finished' (metrics.json is written last)."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").exists():
        return "finished"
    return "unfinished" if (run_dir / "config.json").exists() else "new"


def choose_strategy(devices=None):
    """MirroredStrategy over `devices` (default: the visible GPUs) when there are several, else the default."""
    devices = tf.config.list_logical_devices("GPU") if devices is None else devices
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def class_weights(labels, num_classes, mode):
    """Per-class loss weights (1/frequency)**power, power 0.5 for 'sqrt', 1 for 'balanced'; mean weight 1."""
    if mode == "none":
        return None
    power = {"sqrt": 0.5, "balanced": 1.0}.get(mode)
    if power is None:
        raise GalaxyClassError(f"unknown class weighting {mode!r}: choose none, sqrt or balanced")
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    w = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** power, 0.0)
    w *= counts.sum() / (w * counts).sum()
    return {i: float(w[i]) for i in range(num_classes)}


def prepare_run(config, run_dir, overwrite=False):
    """Create or reopen a run folder; returns the run's config, data file and split."""
    run_dir = Path(run_dir)
    state = run_state(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise GalaxyClassError(f"{run_dir}: exists and is not a folder")
    if state == "finished" and not overwrite:
        differences = settings_differences(Config.load(run_dir / "config.json"), config)
        if differences:
            raise GalaxyClassError(
                f"{run_dir}: holds a finished run with other settings ({'; '.join(differences)}); replace it with "
                f"overwrite=True (notebook) or --overwrite (command line), or choose another folder")
    if overwrite:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "backup", ignore_errors=True)
        state = "new"
    if state == "finished" and not overwrite:
        return None, None, None
    if state == "unfinished":
        config = Config.load(run_dir / "config.json")
        print(f"Continuing the run in {run_dir} with its saved settings (config.json).")
        g = open_galaxy10(config.data_path or config.data)
        return config, g, load_split(run_dir / "split.npz")

    g = open_galaxy10(config.data)
    split = split_indices(g.labels, seed=config.seed,
                          fractions=(1 - config.val_fraction - config.test_fraction,
                                     config.val_fraction, config.test_fraction))
    recipe = read_recipe(g.path, g.source, g.image_shape[0])
    config = config.replace(class_names=list(g.class_names), input_shape=list(g.image_shape), data_path=str(g.path),
                            cutout=recipe.to_dict() if recipe else {})
    run_dir.mkdir(parents=True, exist_ok=True)
    save_split(split, run_dir / "split.npz")
    config.save(run_dir / "config.json")  # last: its presence marks a run that can resume
    return config, g, split


def train(config, run_dir, overwrite=False, callbacks=(), strategy=None, verbose=2, stop_after=None):
    """Train and fine-tune one model into `run_dir`; returns the test metrics (also in metrics.json).

    `stop_after="stage1"` returns None once stage 1 is done; calling again continues the same run.
    """
    run_dir = Path(run_dir)
    config, g, split = prepare_run(config, run_dir, overwrite)
    if config is None:
        if verbose:
            print(f"{run_dir} holds a finished run with these settings: loaded, not retrained "
                  f"(overwrite=True or --overwrite retrains).")
        return json.loads((run_dir / "metrics.json").read_text())
    keras.utils.set_random_seed(config.seed)
    strategy = strategy or choose_strategy()
    batch = config.batch_size * strategy.num_replicas_in_sync
    num_classes = len(config.class_names)

    def one_hot(images, labels):
        return images, tf.one_hot(labels, num_classes)

    epochs_done = sum(len(_read_csv(run_dir / f"history_{s}.csv")) for s in STAGES)
    train_ds = make_dataset(g, split["train"], batch, shuffle=True, augment=config.augment, seed=config.seed,
                            first_epoch=epochs_done)
    val_ds = make_dataset(g, split["val"], batch)
    if config.steps_per_epoch:
        train_ds, val_ds = train_ds.take(config.steps_per_epoch), val_ds.take(config.steps_per_epoch)
    train_ds, val_ds = train_ds.map(one_hot), val_ds.map(one_hot)
    weights = class_weights(g.labels[split["train"]], num_classes, config.class_weight)
    pretrained = config.weights not in ("none", None)

    with strategy.scope():
        model = build_model(config.model, num_classes, tuple(config.input_shape), image_size=config.image_size,
                            weights=config.weights, alpha=config.alpha, dropout=config.dropout,
                            batchnorm=config.batchnorm)
    stages = [("stage1", config.epochs, config.learning_rate),
              ("stage2", config.fine_tune_epochs, config.fine_tune_learning_rate)]
    for stage, epochs, lr in stages:
        done = run_dir / f"{stage}.weights.h5"
        if done.exists():  # finished before the run was interrupted
            model.load_weights(done)
            continue
        if epochs == 0:
            continue
        with strategy.scope():
            set_trainable(model, stage, pretrained, config.fine_tune_layers)
            model.compile(optimizer=keras.optimizers.Adam(lr),
                          loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                          metrics=["accuracy"])
        log = [EpochLine(stage, epochs)] if verbose else []
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=weights, verbose=0,
                  shuffle=False, callbacks=[*stage_callbacks(run_dir, stage, config.patience), *log, *callbacks])
        best = run_dir / f"best_{stage}.weights.h5"
        if best.exists():
            model.load_weights(best)
        _atomic(model.save_weights, done)
        if stage == stop_after:
            return None

    history = {**read_history(run_dir), "replicas": strategy.num_replicas_in_sync, "global_batch_size": batch}
    (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    _atomic(model.save, run_dir / "model.keras")
    metrics = evaluate.evaluate(model, g, split["test"], config.class_names, tta=config.tta)
    metrics["split"] = "test"
    for name in [*[f"{s}.weights.h5" for s in STAGES], *[f"best_{s}.weights.h5" for s in STAGES]]:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # BackupAndRestore leaves its empty folders
    _atomic(lambda p: Path(p).write_text(json.dumps(metrics, indent=1) + "\n"), run_dir / "metrics.json")
    return metrics


# Settings derived from the data when a run starts, not chosen by the user.
DERIVED = ("class_names", "input_shape", "data_path", "cutout")


def settings_differences(saved, requested):
    """The chosen settings in which two configs differ, as "name: saved -> requested" strings."""
    return [f"{f}: {getattr(saved, f)!r} -> {getattr(requested, f)!r}"
            for f in (f.name for f in dataclasses.fields(Config)) if f not in DERIVED
            and getattr(saved, f) != getattr(requested, f)]


class EpochLine(keras.callbacks.Callback):
    """One compact line per epoch: the stage, the epoch, its time, and the losses and one-view accuracies."""

    def __init__(self, stage, epochs):
        super().__init__()
        self.name = {"stage1": "head", "stage2": "fine-tune"}[stage]
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        print(f"{self.name} epoch {epoch + 1:>2}/{self.epochs}  {time.perf_counter() - self.start:5.1f} s  "
              f"loss {logs.get('loss', float('nan')):.3f}  accuracy {logs.get('accuracy', float('nan')):.3f}  "
              f"val_loss {logs.get('val_loss', float('nan')):.3f}  "
              f"val_accuracy {logs.get('val_accuracy', float('nan')):.3f}", flush=True)


def set_trainable(model, stage, pretrained, fine_tune_layers=0):
    """Stage 1 of a pretrained model trains only the head; otherwise the top (or all) of the base trains too."""
    base = base_model(model)
    base.trainable = not (stage == "stage1" and pretrained)
    if base.trainable and stage == "stage2" and fine_tune_layers:
        for layer in base.layers[:-fine_tune_layers]:
            layer.trainable = False


def stage_callbacks(run_dir, stage, patience):
    """Resume after a kill, log every epoch, keep the best validation weights, stop when it stops improving."""
    log = run_dir / f"history_{stage}.csv"
    done = _read_csv(log)
    best_so_far = min((row["val_loss"] for row in done), default=None)
    return [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup" / stage)),
        keras.callbacks.CSVLogger(str(log), append=True),
        keras.callbacks.ModelCheckpoint(str(run_dir / f"best_{stage}.weights.h5"), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_so_far),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience),
    ]


def read_history(run_dir):
    """Both stages' per-epoch metrics, one list per metric, and the epoch where fine-tuning began."""
    rows = {s: _read_csv(Path(run_dir) / f"history_{s}.csv") for s in STAGES}
    all_rows = rows["stage1"] + rows["stage2"]
    keys = [k for k in (all_rows[0] if all_rows else {}) if k != "epoch"]
    return {
        "epochs_stage1": len(rows["stage1"]),
        "epochs_stage2": len(rows["stage2"]),
        "fine_tune_start_epoch": len(rows["stage1"]),
        **{k: [r[k] for r in all_rows] for k in keys},
    }


def _read_csv(path):
    """CSVLogger rows by epoch; a row logged twice around a kill counts once (the later one)."""
    if not Path(path).exists():
        return []
    with open(path) as f:
        by_epoch = {int(r["epoch"]): {k: float(v) for k, v in r.items() if k != "learning_rate"}
                    for r in csv.DictReader(f) if r.get("epoch") not in (None, "epoch")}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _atomic(save, path):
    """Write through `save(tmp)` then rename, so a kill never leaves a half-written file that looks done."""
    path = Path(path)
    tmp = path.with_name(path.name.replace(".", ".tmp.", 1))
    save(str(tmp))
    os.replace(tmp, path)


def load_run(run_dir):
    """The model, settings and split of a trained run folder."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    try:
        model = keras.saving.load_model(run_dir / "model.keras")
    except Exception as e:  # Keras raises many kinds for a damaged file
        raise GalaxyClassError(f"{run_dir / 'model.keras'}: cannot load the model ({e})") from None
    return model, config, load_split(run_dir / "split.npz")
