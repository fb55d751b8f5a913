import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from galaxy_class import GalaxyClassError
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.evaluate import evaluate
from galaxy_class.runs import LOCK, load_run, run_state
from galaxy_class.train import class_weights, train


def test_run_folder_holds_model_settings_split_history_and_metrics(tiny_run, sample_file):
    for name in ["model.keras", "config.json", "split.npz", "history.json", "metrics.json"]:
        assert (tiny_run / name).is_file(), name
    assert not list(tiny_run.glob("*.weights.h5")), "intermediate weights are cleaned up"
    assert not (tiny_run / "backup").exists()
    config = json.loads((tiny_run / "config.json").read_text())
    g = open_galaxy10(sample_file)
    assert config["class_names"] == list(g.class_names) and config["seed"] == 0
    assert config["input_shape"] == list(g.image_shape)
    history = json.loads((tiny_run / "history.json").read_text())
    assert (history["epochs_stage1"], history["epochs_stage2"], history["fine_tune_start_epoch"]) == (1, 1, 1)
    assert history["resumed_at_epochs"] == [], "never resumed"
    assert len(history["val_accuracy"]) == len(history["loss"]) == 2
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    _, _, split = load_run(tiny_run)
    assert metrics["n"] == len(split["test"]) and sum(map(sum, metrics["confusion_matrix"])) == metrics["n"]
    assert run_state(tiny_run) == "finished"


def test_save_then_load_gives_identical_predictions(tiny_run, sample_file, tmp_path):
    model, config, split = load_run(tiny_run)
    g = open_galaxy10(sample_file)
    # metrics.json was measured with the in-memory model before it was saved.
    saved = json.loads((tiny_run / "metrics.json").read_text())
    again = evaluate(model, g, split["test"], config.class_names)
    assert again["confusion_matrix"] == saved["confusion_matrix"]
    images = read_images(g, split["test"][:16])
    model.save(tmp_path / "copy.keras")
    np.testing.assert_array_equal(np.asarray(model(images)),
                                  np.asarray(keras.saving.load_model(tmp_path / "copy.keras")(images)))


def test_a_finished_run_with_the_same_settings_is_loaded_not_retrained(tiny_run, tiny_config, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir() if p.name != LOCK}
    metrics = train(tiny_config, tiny_run, verbose=1)
    assert metrics == json.loads((tiny_run / "metrics.json").read_text())
    assert "loaded, not retrained" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir() if p.name != LOCK} == before


def test_a_finished_run_with_other_settings_is_refused_and_left_untouched(tiny_run, tiny_config):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir() if p.name != LOCK}
    with pytest.raises(GalaxyClassError, match=r"finished run with other settings \(epochs: 1 -> 3\).*overwrite=True"):
        train(tiny_config.replace(epochs=3), tiny_run, verbose=0)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir() if p.name != LOCK} == before


class KillAfter(keras.callbacks.Callback):
    """Stands in for a killed process: raises after `n` epochs (over both stages)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.epochs = n, 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        if self.epochs == self.n:
            raise KeyboardInterrupt


def test_killed_run_resumes_where_it_stopped_and_ends_with_the_same_epochs(tmp_path, tiny_config):
    config = tiny_config.replace(epochs=2, fine_tune_epochs=3)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, run, verbose=0, callbacks=[KillAfter(4)])  # stage 1 done, 2 of 3 fine-tuning epochs
    assert run_state(run) == "unfinished"
    with pytest.raises(GalaxyClassError, match=r"unfinished run with other settings \(epochs: 2 -> 9; seed: 0 -> 5\)"):
        train(config.replace(epochs=9, seed=5), run, verbose=0)
    counter = KillAfter(0)
    train(config, run, verbose=0, callbacks=[counter])
    assert counter.epochs == 1, "only the last fine-tuning epoch was left to run"
    history = json.loads((run / "history.json").read_text())
    assert (history["epochs_stage1"], history["epochs_stage2"]) == (2, 3)
    assert history["resumed_at_epochs"] == [4], "resumed after 4 epochs"
    assert len(history["loss"]) == 5 and json.loads((run / "config.json").read_text())["seed"] == 0

    uninterrupted = tmp_path / "uninterrupted"
    train(config, uninterrupted, verbose=0)
    assert json.loads((uninterrupted / "history.json").read_text())["epochs_stage2"] == 3


def test_overwrite_replaces_a_finished_run(tmp_path, tiny_config):
    run = tmp_path / "run"
    train(tiny_config, run, verbose=0)
    (run / "notes.txt").write_text("mine")
    train(tiny_config.replace(fine_tune_epochs=2), run, overwrite=True, verbose=0)
    assert json.loads((run / "history.json").read_text())["epochs_stage2"] == 2
    assert (run / "notes.txt").read_text() == "mine", "files the run did not write are kept"


def test_class_weights_favour_rare_classes_and_average_one():
    labels = np.array([0] * 90 + [1] * 10)
    for mode, ratio in [("sqrt", 3.0), ("balanced", 9.0)]:
        w = class_weights(labels, 2, mode)
        assert w[1] / w[0] == pytest.approx(ratio)
        assert (90 * w[0] + 10 * w[1]) / 100 == pytest.approx(1.0)
    assert class_weights(labels, 2, "none") is None
    with pytest.raises(GalaxyClassError):
        class_weights(labels, 2, "cubic")


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from galaxy_class.config import Config
from galaxy_class.train import choose_strategy, train
strategy = choose_strategy(tf.config.list_logical_devices("CPU"))
config = Config(**json.loads(sys.argv[1]))
train(config, sys.argv[2], strategy=strategy, verbose=0)
print(type(strategy).__name__, strategy.num_replicas_in_sync)
"""


def test_training_runs_under_mirrored_strategy_on_two_logical_cpus(tmp_path, tiny_config):
    import dataclasses

    out = subprocess.run([sys.executable, "-c", MIRRORED, json.dumps(dataclasses.asdict(tiny_config)),
                          str(tmp_path / "run")], capture_output=True, text=True, env=os.environ, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "MirroredStrategy 2"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["replicas"] == 2 and history["global_batch_size"] == 2 * tiny_config.batch_size


def test_stop_after_stage1_then_continue_finishes_the_same_run(tmp_path, tiny_config):
    run = tmp_path / "run"
    assert train(tiny_config, run, verbose=0, stop_after="stage1") is None
    assert run_state(run) == "unfinished" and len((run / "history_stage1.csv").read_text().splitlines()) == 2
    counter = KillAfter(0)
    metrics = train(tiny_config, run, verbose=0, callbacks=[counter])
    assert counter.epochs == tiny_config.fine_tune_epochs and run_state(run) == "finished"
    assert metrics == json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "history.json").read_text())["resumed_at_epochs"] == [], "a pause is not a resume"


def test_the_stage_with_the_lower_best_validation_loss_wins_later_on_a_tie_and_never_nan():
    from galaxy_class.checkpoints import best_stage

    rows = lambda *losses: [{"val_loss": loss} for loss in losses]  # noqa: E731
    assert best_stage({"stage1": rows(0.9, 0.5, 0.6), "stage2": rows(0.7, 0.55)}) == "stage1"
    assert best_stage({"stage1": rows(0.9, 0.5), "stage2": rows(0.7, 0.5)}) == "stage2"
    assert best_stage({"stage1": rows(0.9, 0.5), "stage2": rows(float("nan"))}) == "stage1"
    assert best_stage({"stage1": rows(0.9), "stage2": []}) == "stage1"


def test_fine_tuning_that_ends_worse_than_the_head_keeps_the_heads_best_weights(tmp_path, tiny_config):
    head_only = tmp_path / "head"
    train(tiny_config.replace(fine_tune_epochs=0, tta=False), head_only, verbose=0)
    run = tmp_path / "run"
    train(tiny_config.replace(fine_tune_epochs=2, fine_tune_learning_rate=50.0, tta=False), run, verbose=0)
    history = json.loads((run / "history.json").read_text())
    assert history["best_stage"] == "stage1" and history["epochs_stage2"] >= 1
    assert min(history["val_loss"][history["fine_tune_start_epoch"]:]) > min(history["val_loss"][:1])
    (a, _, _), (b, _, _) = load_run(head_only), load_run(run)
    for x, y in zip(a.weights, b.weights):
        if "probabilities" not in x.path:  # the head's last layer carries each run's own temperature
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
