"""A run killed with SIGKILL at points across both stages, and started again each time, ends as an uninterrupted run."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from galaxy_class.plots import history_figure
from galaxy_class.checkpoints import best_epoch, early_stopped
from galaxy_class.runs import run_state

# Trains in a fresh process that kills itself (SIGKILL: no clean-up runs) the n-th time it reaches
# KILL_AT="point:n". Points: batch_end, epoch_end, train_end (a stage's fit is over), evaluate,
# "renaming F" (F fully written under its temporary name) and "writing F" (F half written),
# F relative to the run folder. TensorFlow's op determinism makes equal runs equal to the bit.
KILLABLE = """
import json, os, signal, sys
import tensorflow as tf
tf.config.experimental.enable_op_determinism()
import keras
from galaxy_class import evaluate
from galaxy_class.config import Config
from galaxy_class.train import train

config, run_dir = Config(**json.loads(sys.argv[1])), sys.argv[2]
point, _, times = os.environ.get("KILL_AT", ":0").rpartition(":")
seen = 0

def reached(name):
    global seen
    seen += name == point
    return name == point and seen == int(times)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class Points(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        reached("batch_end") and die()
    def on_epoch_end(self, epoch, logs=None):
        reached("epoch_end") and die()
    def on_train_end(self, logs=None):
        reached("train_end") and die()

replace, evaluate_file = os.replace, evaluate.evaluate
def killing_replace(src, dst):
    name = os.path.relpath(dst, run_dir)
    if reached(f"writing {name}"):
        os.truncate(src, os.path.getsize(src) // 2)
        die()
    reached(f"renaming {name}") and die()
    replace(src, dst)
def killing_evaluate(*args, **kwargs):
    reached("evaluate") and die()
    return evaluate_file(*args, **kwargs)
os.replace, evaluate.evaluate = killing_replace, killing_evaluate

train(config, run_dir, verbose=0, callbacks=[Points()])
"""

# Each kill in turn, with the epochs (over both stages) done when the next process starts.
KILLS = [
    ("epoch_end:2", 2),                                 # stage 1, patience half used up
    ("train_end:1", 3),                                 # between the stages: stage 1 stopped early
    ("batch_end:3", 4),                                 # stage 2, inside its second epoch
    ("renaming history_stage2.csv:1", 4),               # stage 2, epoch saved but not yet logged
    ("writing backup/stage2/epoch-2.npz:1", 4),         # stage 2, half-written training state
    ("writing model.keras:1", 6),                       # stages over, half-written model
    ("evaluate:1", 6),                                  # the test split before calibration, no model yet
    ("evaluate:2", 6),                                  # the final evaluation, model.keras written
    ("writing metrics.json:1", 6),                      # the last file
]


@pytest.fixture(scope="module")
def config(tiny_config):
    """SqueezeNet (no BatchNorm) that learns nothing in stage 1 (learning rate 0), so its validation loss
    repeats and early stopping ends stage 1 after 3 of its 4 epochs on any machine; stage 2 really trains,
    with the cosine schedule, a moving average of the weights and random shifts, zooms and colours (all must
    survive the kills too)."""
    return tiny_config.replace(model="squeezenet", epochs=4, learning_rate=0.0, fine_tune_epochs=3,
                               fine_tune_learning_rate=1e-3, fine_tune_schedule="cosine", weight_average=0.9,
                               shift_zoom=0.1, colour_jitter=0.1,
                               patience=2)


def killable_train(config, run_dir, kill_at=None):
    env = {**os.environ, "KILL_AT": kill_at} if kill_at else os.environ
    return subprocess.run([sys.executable, "-c", KILLABLE, json.dumps(dataclasses.asdict(config)), str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_a_run_killed_anywhere_and_resumed_ends_as_the_uninterrupted_run(tmp_path, config):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    out = killable_train(config, uninterrupted)
    assert out.returncode == 0, out.stderr[-3000:]

    for kill_at, epochs_done in KILLS:
        out = killable_train(config, resumed, kill_at)
        assert out.returncode == -signal.SIGKILL, f"not killed at {kill_at}: {out.stderr[-3000:]}"
        assert run_state(resumed) == "unfinished", kill_at
        logs = [resumed / f"history_{s}.csv" for s in ("stage1", "stage2")]
        assert sum(len(p.read_text().splitlines()) - 1 for p in logs if p.exists()) == epochs_done, kill_at
    out = killable_train(config, resumed)
    assert out.returncode == 0, out.stderr[-3000:]

    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in uninterrupted.iterdir()), \
        "no stale files"
    expected, got = (json.loads((run / "history.json").read_text()) for run in (uninterrupted, resumed))
    assert (expected["epochs_stage1"], expected["epochs_stage2"]) == (3, 3), "stage 1 stopped early"
    assert expected["resumed_at_epochs"] == [] and got["resumed_at_epochs"] == [2, 3, 4, 4, 4, 6, 6]
    assert {**got, "resumed_at_epochs": []} == expected, "the same epochs with the same metrics"
    assert (json.loads((resumed / "metrics.json").read_text())
            == json.loads((uninterrupted / "metrics.json").read_text()))
    for a, b in zip(*(keras.saving.load_model(run / "model.keras").get_weights() for run in (uninterrupted, resumed)),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_learning_curves_mark_where_a_run_was_resumed():
    history = {"loss": [1, 0.8, 0.6, 0.5], "val_loss": [1.1, 0.9, 0.8, 0.7], "accuracy": [0.5, 0.6, 0.7, 0.8],
               "val_accuracy": [0.4, 0.5, 0.6, 0.7], "epochs_stage1": 2, "epochs_stage2": 2,
               "fine_tune_start_epoch": 2, "resumed_at_epochs": [1, 3, 3]}
    for ax in history_figure(history).axes:
        resumed = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert [line.get_xdata()[0] for line in resumed] == [1.5, 3.5], "one line after each epoch a run resumed at"
        labels = ax.get_legend_handles_labels()[1]
        assert labels.count("resumed") == 1 and "fine-tuning starts" in labels
    unmarked = history_figure({k: v for k, v in history.items() if k != "resumed_at_epochs"})
    assert not [line for line in unmarked.axes[0].get_lines() if line.get_linestyle() == ":"], \
        "histories written before resumes were recorded still plot"


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_early_stopping_replayed_from_the_log_stops_where_keras_stops(patience):
    rng = np.random.default_rng(patience)
    for _ in range(200):
        losses = [float(v) for v in rng.choice([0.8, 0.9, 1.0, 1.1, np.nan], size=8)]
        keras_stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience)
        keras_stop.set_model(SimpleNamespace(stop_training=False))
        keras_stop.on_train_begin()
        for epoch, loss in enumerate(losses):
            keras_stop.on_epoch_end(epoch, {"val_loss": loss})
            ours = early_stopped([{"val_loss": v} for v in losses[:epoch + 1]], patience)
            assert ours == keras_stop.model.stop_training, (losses[:epoch + 1], patience)
            if ours:
                break


def test_the_best_epoch_is_the_one_keras_model_checkpoint_would_have_saved_last():
    for seed in range(200):
        losses = [float(v) for v in np.random.default_rng(seed).choice([0.8, 0.9, 1.0, 1.1, np.nan], size=8)]
        checkpoint = keras.callbacks.ModelCheckpoint("never-written.keras", monitor="val_loss", save_best_only=True)
        saved_at = []
        for epoch, loss in enumerate(losses):
            checkpoint.set_model(SimpleNamespace(save=lambda path, overwrite, n=epoch + 1: saved_at.append(n)))
            checkpoint.on_epoch_end(epoch, {"val_loss": loss})
            assert best_epoch([{"val_loss": v} for v in losses[:epoch + 1]]) == saved_at[-1], losses[:epoch + 1]
    assert best_epoch([]) is None
