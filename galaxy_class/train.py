"""Two-stage training into a run folder: a new head on the frozen pretrained base, then fine-tuning.

A run killed at any moment and started again ends as it would have ended uninterrupted: each epoch is
committed to the run folder (runs.py) with the stage's training state (checkpoints.py).
"""

import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from galaxy_class import calibration, distill, evaluate, integrity, predict
from galaxy_class.batches import check_cache, make_dataset, open_images
from galaxy_class.checkpoints import (StageCheckpoint, best_epoch, best_stage, end_stage, load_state, resume_stage,
                                     stage_over, state_file)
from galaxy_class.config import PRETRAINED_BATCHNORM, Config
from galaxy_class.cutout import read_recipe
from galaxy_class.data import load_split, open_galaxy10, save_split, split_indices
from galaxy_class.errors import GalaxyClassError
from galaxy_class.models import base_model, build_model, choose_precision
from galaxy_class.quiet import stderr_is_terminal
from galaxy_class.runs import (RUN_FILES, STAGES, atomic, clear_run, history_path, locked, note_pause, note_start,
                               read_csv, read_history, remove_backup, run_state, settings_differences, temporary,
                               write_json)


def train(config, run_dir, overwrite=False, callbacks=(), strategy=None, verbose=2, stop_after=None):
    """Train and fine-tune one model into `run_dir`; returns the test metrics (also in metrics.json).

    `stop_after="stage1"` returns None once stage 1 is done; calling again continues the same run.
    """
    check_cache(config.cache)
    with locked(run_dir):
        return _train(config, Path(run_dir), overwrite, callbacks, strategy, verbose, stop_after)


def _train(config, run_dir, overwrite, callbacks, strategy, verbose, stop_after):
    resuming = run_state(run_dir) == "unfinished" and not overwrite
    config = config.with_model_defaults()
    cache = config.cache  # how images are served changes no result: the one asked for now, not the saved one
    config, g, split = prepare_run(config, run_dir, overwrite, verbose=bool(verbose))
    if config is None:
        if verbose:
            print(f"{run_dir} holds a finished run with these settings: loaded, not retrained "
                  f"(overwrite=True or --overwrite retrains).")
        return None if stop_after else json.loads((run_dir / "metrics.json").read_text())
    for name in RUN_FILES:  # what a kill left half-written
        temporary(run_dir / name).unlink(missing_ok=True)
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
        history = {**read_history(run_dir), "best_stage": best_stage({s: read_csv(history_path(run_dir, s))
                                                                       for s in STAGES}),
                   "replicas": strategy.num_replicas_in_sync,
                   "global_batch_size": config.batch_size * strategy.num_replicas_in_sync}
        write_json(history, run_dir / "history.json")
        write_json(calibrate(model, g, split, config), run_dir / "calibration.json")
        atomic(model.save, run_dir / "model.keras")  # from here on only the evaluation is left
    remove_backup(run_dir)
    metrics = evaluate.evaluate(model, g, split["test"], config.class_names, tta=config.tta)
    metrics["split"] = "test"
    before = json.loads((run_dir / "calibration.json").read_text())
    metrics["calibration"] = {**before, "test_after": {k: metrics[k] for k in ("ece", "brier", "log_loss")}}
    write_json(metrics, run_dir / "metrics.json")
    return metrics


def prepare_run(config, run_dir, overwrite=False, verbose=False):
    """Create or reopen a run folder; returns the run's config, data file and split (None for a finished run
    with these settings)."""
    run_dir = Path(run_dir)
    state = "new" if overwrite else run_state(run_dir)
    if state != "new":
        saved = Config.load(run_dir / "config.json")
        differences = settings_differences(saved, config)
        if differences:
            raise GalaxyClassError(
                f"{run_dir}: holds {'a finished' if state == 'finished' else 'an unfinished'} run with other settings "
                f"({'; '.join(differences)}); replace it with overwrite=True (notebook) or --overwrite (command "
                f"line), or choose another folder")
        if state == "finished":
            return None, None, None
        return saved, open_galaxy10(saved.data_path or saved.data), load_split(run_dir / "split.npz")

    g = open_galaxy10(config.data)
    config.check()
    # Copies of one galaxy stay in one part of the split, and blank images in none (integrity.py).
    found = integrity.check(g, progress=bool(verbose) and stderr_is_terminal())
    split = split_indices(g.labels, seed=config.seed, groups=found.group_ids, leave_out=found.left_out,
                          fractions=(1 - config.val_fraction - config.test_fraction,
                                     config.val_fraction, config.test_fraction),
                          fold=(config.cv_fold, config.cv_folds) if config.cv_folds else None)
    if verbose:
        print(f"Duplicates and blank images: {found.split_note()}.")
    if config.teacher:  # before anything is written: a teacher that cannot be used leaves no run behind
        distill.check_teacher(config.teacher, g.class_names, split, config.teacher_weight)
    recipe = read_recipe(g.path, g.source, g.image_shape[0], len(g.class_names))
    # Chosen once and saved: a resumed run goes on in the precision it started in, wherever it resumes.
    policy, why = choose_precision(config.precision, config.model)
    if verbose:
        print(f"Precision: {policy} ({why}).")
    config = config.replace(class_names=list(g.class_names), input_shape=list(g.image_shape), data_path=str(g.path),
                            cutout=recipe.to_dict() if recipe else {}, dtype_policy=policy,
                            integrity=found.run_record())
    if overwrite:  # only now that every check has passed: a refused run replaces nothing
        clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    shaped = bool(found.groups) or len(found.left_out) > 0
    save_split(split, run_dir / "split.npz", *((found.left_out, found.group_ids) if shaped else ()))
    atomic(config.save, run_dir / "config.json")  # last: its presence marks a run that can resume
    return config, g, split


def fit_stages(config, g, split, run_dir, strategy, resuming, callbacks, verbose, stop_after):
    """Run (or finish) both stages; returns the model with the best weights of the stage whose best validation
    loss was lowest, or None when it stopped after `stop_after`."""
    batch = config.batch_size * strategy.num_replicas_in_sync
    num_classes = len(config.class_names)
    done = {s: read_csv(history_path(run_dir, s)) for s in STAGES}
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
    weights = class_weights(g.labels[split["train"]], num_classes, config.class_weight)
    # Keras would weight a soft target by its largest share, the teacher's class: weight by the true label.
    per_image = (np.asarray([weights[k] for k in range(num_classes)], np.float32)[g.labels]
                 if targets is not None and weights else None)
    train_ds = make_dataset(g, split["train"], batch, shuffle=True, augment=config.augment, seed=config.seed,
                            first_epoch=epochs_done, source=images, targets=targets, sample_weights=per_image,
                            shift_zoom=config.shift_zoom, colour=config.colour_jitter)
    val_ds = make_dataset(g, split["val"], batch, source=images)
    if config.steps_per_epoch:
        train_ds, val_ds = train_ds.take(config.steps_per_epoch), val_ds.take(config.steps_per_epoch)
    train_ds, val_ds = (train_ds if targets is not None else train_ds.map(one_hot)), val_ds.map(one_hot)
    steps = config.steps_per_epoch or -(-len(split["train"]) // batch)
    pretrained = config.weights not in ("none", None)

    with strategy.scope():
        model = _build(config, config.dtype_policy or "float32")
    stages = [("stage1", config.epochs, config.learning_rate),
              ("stage2", config.fine_tune_epochs, config.fine_tune_learning_rate)]
    for stage, epochs, lr in stages:
        log, folder = history_path(run_dir, stage), run_dir / "backup" / stage
        rows = read_csv(log)
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
                    resume_stage(model, folder, log, rows)
            lines = [EpochLine(stage, epochs)] if verbose else []
            # Validation (so early stopping and the best epoch) sees the averaged weights; training goes on
            # from the raw ones, which are what each epoch's state saves beside the optimizer's averages.
            swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=False)] if averaged else []
            # Not Keras' BackupAndRestore: the epoch it restores stays set on the model for every later fit,
            # so a run resumed in stage 1 skipped that many epochs of stage 2.
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=len(rows),
                      class_weight=None if per_image is not None else weights, verbose=0, shuffle=False,
                      callbacks=[*swap, StageCheckpoint(folder, log, config.patience), *lines, *callbacks])
            rows = read_csv(log)
        with strategy.scope():
            end_stage(model, folder, log, rows, averaged)
        if stage == stop_after:
            note_pause(run_dir, sum(len(read_csv(history_path(run_dir, s))) for s in STAGES))
            return None
    # Fine-tuning can end worse on validation than the new head alone did: then the head's best weights stay.
    rows = {s: read_csv(history_path(run_dir, s)) for s in STAGES}
    if rows["stage2"] and best_stage(rows) == "stage1":
        with strategy.scope():
            load_state(model, state_file(run_dir / "backup" / "stage1", best_epoch(rows["stage1"]),
                                         history_path(run_dir, "stage1")), parts=("weights",))
    return model


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


def learning_rate(lr, stage, steps, config):
    """The stage's rate: constant, or for fine-tuning with the cosine schedule decaying to zero over its
    `steps` (counted by the optimizer, whose state a resumed run restores)."""
    if stage == "stage2" and config.fine_tune_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    if config.fine_tune_schedule not in ("constant", "cosine"):
        raise GalaxyClassError(f"unknown fine-tuning schedule {config.fine_tune_schedule!r}: choose constant or "
                               f"cosine")
    return lr


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


def calibrate(model, g, split, config):
    """Fit a temperature on the validation split (never the test split), to the probabilities the run reports
    (with `config.tta` the mean of 8 views), keep it if it holds up on validation galaxies left out of its fit,
    and fold it into `model`; returns it with the test split's calibration before it, for metrics.json."""
    val_views, val_labels = predict.predict_file_views(model, g, split["val"], tta=config.tta)
    before = evaluate.evaluate(model, g, split["test"], config.class_names, tta=config.tta)
    temperature, check = calibration.choose_temperature(val_views, val_labels)
    calibration.apply_temperature(model, temperature)
    return {"temperature": temperature, "check": check,
            "fitted_on": "validation split, " + ("mean of 8 views" if config.tta else "one view"),
            "test_before": {k: before[k] for k in ("ece", "brier", "log_loss")},
            "reliability_before": before["reliability"]}


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


def choose_strategy(devices=None):
    """MirroredStrategy over `devices` (default: the visible GPUs) when there are several, else the default."""
    devices = tf.config.list_logical_devices("GPU") if devices is None else devices
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()
