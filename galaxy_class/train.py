"""Two-stage training (new head, then fine-tuning) into a run folder that survives being killed.

A run killed at any moment and started again ends as it would have ended uninterrupted. After each
epoch the stage's whole training state (weights, optimizer, random generators) is saved under backup/,
then the epoch's row is added to history_<stage>.csv; both writes replace files atomically, and the row
commits the epoch. On a restart the rows alone tell which epochs are done, which one was the best, and
whether early stopping had already ended the stage: nothing that matters lives only in a process.
"""

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

from galaxy_class import calibration, distill, evaluate, predict
from galaxy_class.batches import check_cache, make_dataset, open_images
from galaxy_class.config import BATCHNORM_MODES, Config, run_config
from galaxy_class.cutout import read_recipe
from galaxy_class.data import load_split, open_galaxy10, save_split, split_indices
from galaxy_class.errors import GalaxyClassError
from galaxy_class.models import PRETRAINED_BATCHNORM, base_model, build_model, choose_precision

STAGES = ("stage1", "stage2")
# Everything a run writes besides backup/ (and the temporary names of these); --overwrite removes only those.
RUN_FILES = ["config.json", "split.npz", "model.keras", "history.json", "calibration.json", "metrics.json",
             *[f"history_{s}.csv" for s in STAGES]]
# What earlier versions kept beside backup/ in an unfinished run; --overwrite removes them too.
OLD_RUN_FILES = [f"{prefix}{s}.weights.h5" for s in STAGES for prefix in ("", "best_")]


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


def prepare_run(config, run_dir, overwrite=False, verbose=False):
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
        return None, None, None
    if overwrite:
        for name in [*RUN_FILES, *OLD_RUN_FILES]:
            (run_dir / name).unlink(missing_ok=True)
            _temporary(run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "backup", ignore_errors=True)
        state = "new"
    if state == "unfinished":
        config = Config.load(run_dir / "config.json")
        print(f"Continuing the run in {run_dir} with its saved settings (config.json).")
        g = open_galaxy10(config.data_path or config.data)
        return config, g, load_split(run_dir / "split.npz")

    g = open_galaxy10(config.data)
    split = split_indices(g.labels, seed=config.seed,
                          fractions=(1 - config.val_fraction - config.test_fraction,
                                     config.val_fraction, config.test_fraction))
    if not 0 <= config.weight_average < 1:
        raise GalaxyClassError(f"weight average momentum {config.weight_average}: must be at least 0 and below 1")
    if not 0 <= config.shift_zoom <= 0.5:
        raise GalaxyClassError(f"shift and zoom {config.shift_zoom}: must be between 0 and 0.5")
    if not 0 <= config.colour_jitter < 1:
        raise GalaxyClassError(f"colour jitter {config.colour_jitter}: must be at least 0 and below 1")
    if config.fine_tune_batchnorm not in BATCHNORM_MODES:
        raise GalaxyClassError(f"unknown fine-tuning BatchNorm mode {config.fine_tune_batchnorm!r}: choose "
                               f"{' or '.join(BATCHNORM_MODES)}")
    if config.teacher:  # before anything is written: a teacher that cannot be used leaves no run behind
        distill.check_teacher(config.teacher, g.class_names, split, config.teacher_weight)
    recipe = read_recipe(g.path, g.source, g.image_shape[0], len(g.class_names))
    # Chosen once and saved: a resumed run goes on in the precision it started in, wherever it resumes.
    policy, why = choose_precision(config.precision, config.model)
    if verbose:
        print(f"Precision: {policy} ({why}).")
    config = config.replace(class_names=list(g.class_names), input_shape=list(g.image_shape), data_path=str(g.path),
                            cutout=recipe.to_dict() if recipe else {}, dtype_policy=policy)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_split(split, run_dir / "split.npz")
    _atomic(config.save, run_dir / "config.json")  # last: its presence marks a run that can resume
    return config, g, split


def train(config, run_dir, overwrite=False, callbacks=(), strategy=None, verbose=2, stop_after=None):
    """Train and fine-tune one model into `run_dir`; returns the test metrics (also in metrics.json).

    `stop_after="stage1"` returns None once stage 1 is done; calling again continues the same run.
    """
    run_dir = Path(run_dir)
    resuming = run_state(run_dir) == "unfinished" and not overwrite
    check_cache(config.cache)
    config = config.with_model_defaults()
    cache = config.cache  # how images are served changes no result: the one asked for now, not the saved one
    config, g, split = prepare_run(config, run_dir, overwrite, verbose=bool(verbose))
    if config is None:
        if verbose:
            print(f"{run_dir} holds a finished run with these settings: loaded, not retrained "
                  f"(overwrite=True or --overwrite retrains).")
        return None if stop_after else json.loads((run_dir / "metrics.json").read_text())
    for name in RUN_FILES:  # what a kill left half-written
        _temporary(run_dir / name).unlink(missing_ok=True)
    keras.utils.set_random_seed(config.seed)
    strategy = strategy or choose_strategy()
    if (run_dir / "model.keras").exists():  # trained: killed after writing the model, while evaluating
        model = keras.saving.load_model(run_dir / "model.keras")
    else:
        model = fit_stages(config.replace(cache=cache), g, split, run_dir, strategy, resuming, callbacks, verbose,
                           stop_after)
        if model is None:
            return None
        model = float32_twin(model, config)
        history = {**read_history(run_dir), "replicas": strategy.num_replicas_in_sync,
                   "global_batch_size": config.batch_size * strategy.num_replicas_in_sync}
        _write_json(history, run_dir / "history.json")
        calibrated = calibrate(model, g, split, config)
        _write_json(calibrated, run_dir / "calibration.json")
        _atomic(model.save, run_dir / "model.keras")  # from here on only the evaluation is left
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    metrics = evaluate.evaluate(model, g, split["test"], config.class_names, tta=config.tta)
    metrics["split"] = "test"
    before = json.loads((run_dir / "calibration.json").read_text())
    metrics["calibration"] = {**before, "test_after": {k: metrics[k] for k in ("ece", "brier", "log_loss")}}
    _write_json(metrics, run_dir / "metrics.json")
    return metrics


def calibrate(model, g, split, config):
    """Fit a temperature on the validation split (never the test split), to the probabilities the run reports
    (with `config.tta` the mean of 8 views), and fold it into `model`; returns it with the test split's
    calibration before it, for metrics.json."""
    val_views, val_labels = predict.predict_file_views(model, g, split["val"], tta=config.tta)
    before = evaluate.evaluate(model, g, split["test"], config.class_names, tta=config.tta)
    temperature = calibration.fit_temperature(val_views, val_labels)
    calibration.apply_temperature(model, temperature)
    return {"temperature": temperature,
            "fitted_on": "validation split, " + ("mean of 8 views" if config.tta else "one view"),
            "test_before": {k: before[k] for k in ("ece", "brier", "log_loss")},
            "reliability_before": before["reliability"]}


def fit_stages(config, g, split, run_dir, strategy, resuming, callbacks, verbose, stop_after):
    """Run (or finish) both stages; returns the model with the best weights of the last stage, or None
    when it stopped after `stop_after`."""
    batch = config.batch_size * strategy.num_replicas_in_sync
    num_classes = len(config.class_names)
    done = {s: _read_csv(run_dir / f"history_{s}.csv") for s in STAGES}
    epochs_done = sum(map(len, done.values()))
    if note_start(run_dir, epochs_done, resuming) and verbose:
        print(f"Resumed after {len(done['stage1'])} head and {len(done['stage2'])} fine-tuning epochs; "
              f"it goes on as if never interrupted (history.json records where).")

    def one_hot(images, labels):
        return images, tf.one_hot(labels, num_classes)

    # Pass e over the training data is shuffled by (seed, e) counted over both stages, resumed or not;
    # the batches are the same whether the images are held in memory or streamed.
    images = open_images(g, np.concatenate([split["train"], split["val"]]), config.cache, verbose=bool(verbose))
    # Distilled: the training targets mix the labels with the teacher's probabilities; validation (early
    # stopping) and everything after training still score against the labels alone.
    targets = distill.teacher_targets(config.teacher, g, split, config.teacher_weight) if config.teacher else None
    train_ds = make_dataset(g, split["train"], batch, shuffle=True, augment=config.augment, seed=config.seed,
                            first_epoch=epochs_done, source=images, targets=targets,
                            shift_zoom=config.shift_zoom, colour=config.colour_jitter)
    val_ds = make_dataset(g, split["val"], batch, source=images)
    if config.steps_per_epoch:
        train_ds, val_ds = train_ds.take(config.steps_per_epoch), val_ds.take(config.steps_per_epoch)
    train_ds, val_ds = (train_ds if targets is not None else train_ds.map(one_hot)), val_ds.map(one_hot)
    steps = config.steps_per_epoch or -(-len(split["train"]) // batch)
    weights = class_weights(g.labels[split["train"]], num_classes, config.class_weight)
    pretrained = config.weights not in ("none", None)

    with strategy.scope():
        model = _build(config, config.dtype_policy or "float32")
    stages = [("stage1", config.epochs, config.learning_rate),
              ("stage2", config.fine_tune_epochs, config.fine_tune_learning_rate)]
    for stage, epochs, lr in stages:
        log, folder = run_dir / f"history_{stage}.csv", run_dir / "backup" / stage
        rows = _read_csv(log)
        averaged = stage == "stage2" and config.weight_average > 0
        with strategy.scope():  # compiled even when the stage is over: its optimizer holds averaged weights
            set_trainable(model, stage, pretrained, config.fine_tune_layers, config.fine_tune_batchnorm)
            model.compile(optimizer=keras.optimizers.Adam(learning_rate(lr, stage, epochs * steps, config),
                                                          use_ema=averaged, ema_momentum=config.weight_average or 0.99),
                          loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                          metrics=["accuracy"])
            if rows:  # killed during (or after) this stage: go on from its last committed epoch
                model.optimizer.build(model.trainable_variables)
        if epochs and not stage_over(rows, epochs, config.patience):
            with strategy.scope():
                if rows:
                    load_state(model, _state_file(folder, len(rows), log))
            lines = [EpochLine(stage, epochs)] if verbose else []
            # Validation (so early stopping and the best epoch) sees the averaged weights; training goes on
            # from the raw ones, which are what each epoch's state saves beside the optimizer's averages.
            swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=False)] if averaged else []
            # Not Keras' BackupAndRestore: the epoch it restores stays set on the model for every later fit,
            # so a run resumed in stage 1 skipped that many epochs of stage 2.
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=len(rows),
                      class_weight=weights, verbose=0, shuffle=False,
                      callbacks=[*swap, StageCheckpoint(folder, log, config.patience), *lines, *callbacks])
            rows = _read_csv(log)
        with strategy.scope():
            end_stage(model, folder, log, rows, averaged)
        if stage == stop_after:
            note_pause(run_dir, sum(len(_read_csv(run_dir / f"history_{s}.csv")) for s in STAGES))
            return None
    return model


def learning_rate(lr, stage, steps, config):
    """The stage's rate: constant, or for fine-tuning with the cosine schedule decaying to zero over its
    `steps` (counted by the optimizer, whose state a resumed run restores)."""
    if stage == "stage2" and config.fine_tune_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    if config.fine_tune_schedule not in ("constant", "cosine"):
        raise GalaxyClassError(f"unknown fine-tuning schedule {config.fine_tune_schedule!r}: choose constant or "
                               f"cosine")
    return lr


def _build(config, dtype_policy):
    return build_model(config.model, len(config.class_names), tuple(config.input_shape), image_size=config.image_size,
                       weights=config.weights, alpha=config.alpha, dropout=config.dropout,
                       batchnorm=config.batchnorm, dtype_policy=dtype_policy)


def float32_twin(model, config):
    """`model` computing in float32 (its weights already are): what is calibrated, evaluated and saved, so a
    model trained in mixed precision predicts, exports and explains on any machine as a float32 one does."""
    if model.dtype_policy.name == "float32":
        return model
    twin = _build(config, "float32")
    twin.set_weights(model.get_weights())
    return twin


# Settings derived from the data when a run starts, not chosen by the user.
DERIVED = ("class_names", "input_shape", "data_path", "cutout", "dtype_policy")
# Settings that change how fast a run goes, not what it computes.
SPEED_ONLY = ("cache",)


def settings_differences(saved, requested):
    """The chosen settings in which two configs differ, as "name: saved -> requested" strings."""
    saved, requested = saved.with_model_defaults(), requested.with_model_defaults()
    moot = () if {saved.model, requested.model} & set(PRETRAINED_BATCHNORM) else ("fine_tune_batchnorm",)
    return [f"{f}: {getattr(saved, f)!r} -> {getattr(requested, f)!r}"
            for f in (f.name for f in dataclasses.fields(Config)) if f not in DERIVED + SPEED_ONLY + moot
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


def set_trainable(model, stage, pretrained, fine_tune_layers=0, batchnorm="adapt"):
    """Stage 1 of a pretrained model trains only the head; otherwise the top (or all) of the base trains too.

    A layer that does not train runs in inference mode (Keras 3), BatchNorm included. While the base
    fine-tunes, its BatchNorm layers either "adapt" (normalise by each batch's statistics, which their moving
    ones follow, and learn their scales and offsets) or stay "frozen" with the pretrained statistics and
    scales; BatchNorm layers without pretrained statistics (a model trained from scratch, SqueezeNet's added
    ones) always adapt."""
    base = base_model(model)
    base.trainable = not (stage == "stage1" and pretrained)
    if base.trainable and stage == "stage2" and fine_tune_layers:
        for layer in base.layers[:-fine_tune_layers]:
            layer.trainable = False
    if base.trainable and pretrained and batchnorm == "frozen" and model.name in PRETRAINED_BATCHNORM:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


class StageCheckpoint(keras.callbacks.Callback):
    """After each epoch: save the training state, commit the epoch's row to the log, stop early when due."""

    def __init__(self, folder, log, patience):
        super().__init__()
        self.folder, self.log, self.patience = Path(folder), Path(log), patience

    def on_train_begin(self, logs=None):
        self.rows = _read_csv(self.log)
        _keep_states(self.folder, self.rows)  # drop what a kill left behind

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        save_state(self.model, self.folder / f"epoch-{len(self.rows)}.npz")
        _write_csv(self.log, self.rows)  # the commit: a kill before this replays the epoch
        _keep_states(self.folder, self.rows)
        if early_stopped(self.rows, self.patience):
            self.model.stop_training = True


def early_stopped(rows, patience):
    """Whether Keras' EarlyStopping on val_loss would have stopped after these epochs, counting its patience
    over all of them, however many processes ran them."""
    best, wait = None, 0
    for epoch, row in enumerate(rows):
        wait += 1
        if _improves(row["val_loss"], best):
            best, wait = row["val_loss"], 0
        elif wait >= patience and epoch > 0:
            return True
    return False


def best_epoch(rows):
    """How many epochs had run when Keras' ModelCheckpoint(save_best_only) last saved; None for no epochs."""
    best, count = None, None
    for epoch, row in enumerate(rows):
        if _improves(row["val_loss"], best):
            best, count = row["val_loss"], epoch + 1
    return count


def _improves(loss, best):
    """Keras' rule: the first epoch always improves (even a NaN loss), later ones only by being lower."""
    return best is None or loss < best


def stage_over(rows, epochs, patience):
    """Whether a stage with these epochs logged has nothing left to run."""
    return len(rows) >= epochs or early_stopped(rows, patience)


def end_stage(model, folder, log, rows, averaged=False):
    """Load the stage's last state (seeds included) and then its best weights, or with `averaged` the best
    epoch's moving average of them: the same after a fit or a kill."""
    if not rows:
        return
    load_state(model, _state_file(folder, len(rows), log), parts=("weights", "seeds"))
    best = best_epoch(rows)
    if best != len(rows) or averaged:
        load_state(model, _state_file(folder, best, log), parts=("weights", "optimizer") if averaged else ("weights",))
    if averaged:
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # mixed precision wraps it
        for variable, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average,
                                     strict=True):
            variable.assign(average)


def _state_variables(model):
    """The variables that make up a training state: weights, the random generators' seeds, the optimizer's."""
    weights = model.weights
    ids = {id(w) for w in weights}
    return {"weights": weights, "seeds": [v for v in model.variables if id(v) not in ids],
            "optimizer": model.optimizer.variables if getattr(model, "optimizer", None) else []}


def save_state(model, path):
    """Everything needed to go on training `model` as if never stopped, written atomically."""
    arrays = {f"{part}{i}": np.asarray(v) for part, variables in _state_variables(model).items()
              for i, v in enumerate(variables)}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(lambda p: np.savez(p, **arrays), path)


def load_state(model, path, parts=("weights", "seeds", "optimizer")):
    """Assign the `parts` of a state saved by `save_state` to `model`'s variables."""
    with np.load(path) as saved:
        for part in parts:
            variables = _state_variables(model)[part]
            if sum(k.startswith(part) for k in saved.files) != len(variables):
                raise GalaxyClassError(f"{path}: a saved training state of another model; retrain with "
                                       f"overwrite=True or --overwrite")
            for i, v in enumerate(variables):
                v.assign(saved[f"{part}{i}"])


def _state_file(folder, epochs, log):
    """The saved state after `epochs` epochs of a stage, which its log says must exist."""
    path = Path(folder) / f"epoch-{epochs}.npz"
    if not path.exists():
        raise GalaxyClassError(f"{path}: missing, so the {epochs} epochs in {log} cannot be continued (a run "
                               f"from an earlier version?); retrain with overwrite=True or --overwrite")
    return path


def _keep_states(folder, rows):
    """Delete the saved states no longer needed: all but the last committed epoch's and the best one's."""
    keep = {f"epoch-{n}.npz" for n in (len(rows), best_epoch(rows)) if n}
    for path in Path(folder).glob("*"):
        if path.name not in keep:
            path.unlink()


def note_start(run_dir, epochs_done, resuming):
    """Record where a resumed run started again, unless the last call stopped there on purpose (stop_after);
    True if it did."""
    notes = _read_notes(run_dir)
    resumed = resuming and notes["paused_at_epoch"] != epochs_done
    if resumed:
        notes["resumed_at_epochs"].append(epochs_done)
    _write_notes(run_dir, {**notes, "paused_at_epoch": None})
    return resumed


def note_pause(run_dir, epochs_done):
    """Record that the run stopped here on purpose, so that going on from here is no resume."""
    notes = _read_notes(run_dir)
    _write_notes(run_dir, {**notes, "paused_at_epoch": epochs_done})


def _read_notes(run_dir):
    path = Path(run_dir) / "backup" / "resumes.json"
    return json.loads(path.read_text()) if path.exists() else {"resumed_at_epochs": [], "paused_at_epoch": None}


def _write_notes(run_dir, notes):
    path = Path(run_dir) / "backup" / "resumes.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(notes, path)


def read_history(run_dir):
    """Both stages' per-epoch metrics, one list per metric, the epoch where fine-tuning began, and the
    epochs after which a killed or interrupted run was resumed."""
    rows = {s: _read_csv(Path(run_dir) / f"history_{s}.csv") for s in STAGES}
    all_rows = rows["stage1"] + rows["stage2"]
    keys = [k for k in (all_rows[0] if all_rows else {}) if k != "epoch"]
    return {
        "epochs_stage1": len(rows["stage1"]),
        "epochs_stage2": len(rows["stage2"]),
        "fine_tune_start_epoch": len(rows["stage1"]),
        "resumed_at_epochs": _read_notes(run_dir)["resumed_at_epochs"],
        **{k: [r[k] for r in all_rows] for k in keys},
    }


def _read_csv(path):
    """The logged epochs' metrics, one dict of floats per epoch (the learning rate left out)."""
    if not Path(path).exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in r.items() if k not in ("epoch", "learning_rate")} for r in csv.DictReader(f)]


def _write_csv(path, rows):
    """The log as Keras' CSVLogger writes it, epoch first; replaced atomically."""
    keys = sorted(rows[0])

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", *keys])
            writer.writerows([epoch, *(row[k] for k in keys)] for epoch, row in enumerate(rows))

    _atomic(write, path)


def _temporary(path):
    """Where `_atomic` writes `path` first (the same suffix, so savers that check it accept it)."""
    path = Path(path)
    return path.with_name(path.name.replace(".", ".tmp.", 1))


def _write_json(data, path):
    _atomic(lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"), path)


def _atomic(save, path):
    """Write through `save(tmp)` then rename, so a kill never leaves a half-written file that looks done."""
    tmp = _temporary(path)
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
