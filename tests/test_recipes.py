"""Training recipes beside the defaults: distilling from a trained run, the cosine fine-tuning schedule,
a moving average of the weights."""

import json
from pathlib import Path

import numpy as np
import pytest

from galaxy_class import GalaxyClassError
from galaxy_class.batches import make_dataset
from galaxy_class.config import Config
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.distill import teacher_targets
from galaxy_class.predict import predict_file
from galaxy_class.runs import load_run, settings_differences
from galaxy_class.train import learning_rate, train


def test_teacher_targets_mix_the_labels_with_the_teachers_8_view_probabilities(tiny_run, sample_file):
    g = open_galaxy10(sample_file)
    model, config, split = load_run(tiny_run)
    targets = teacher_targets(tiny_run, g, split, weight=0.25)
    train_rows = targets[split["train"]]
    probs, labels = predict_file(model, g, split["train"], tta=True)
    np.testing.assert_allclose(train_rows, 0.75 * np.eye(len(config.class_names))[labels] + 0.25 * probs,
                               atol=1e-5)
    np.testing.assert_allclose(train_rows.sum(axis=1), 1, atol=1e-5)
    assert (train_rows.argmax(axis=1) == labels).all(), "with weight < 1/2 the label keeps the largest share"
    others = np.setdiff1d(np.arange(len(g.labels)), split["train"])
    assert not targets[others].any(), "nothing of the teacher on validation or test galaxies"


def test_batches_carry_the_targets_of_their_own_images(sample_file):
    g = open_galaxy10(sample_file)
    indices = np.arange(0, 60, 3)
    targets = np.zeros((len(g.labels), 4), np.float32)
    targets[:, 0], targets[:, 1] = np.arange(len(g.labels)), g.labels  # each row names its image and label
    batches = list(make_dataset(g, indices, 7, shuffle=True, seed=3, targets=targets))
    assert sum(len(rows) for _, rows in batches) == len(indices)
    for images, rows in batches:
        rows = np.asarray(rows)
        assert rows.dtype == np.float32 and rows.shape[1] == 4
        positions = rows[:, 0].astype(int)
        np.testing.assert_array_equal(np.asarray(images), read_images(g, positions))
        np.testing.assert_array_equal(rows[:, 1], g.labels[positions])


def test_a_teacher_trained_on_another_split_is_refused_before_anything_is_written(tiny_run, tiny_config,
                                                                                  tmp_path):
    run_dir = tmp_path / "student"
    with pytest.raises(GalaxyClassError, match="another split.*leak"):
        train(tiny_config.replace(seed=1, teacher=str(tiny_run)), run_dir, verbose=0)
    assert not run_dir.exists() or not any(run_dir.iterdir())
    with pytest.raises(GalaxyClassError, match="not a finished training run"):
        train(tiny_config.replace(teacher=str(tmp_path)), tmp_path / "student2", verbose=0)
    with pytest.raises(GalaxyClassError, match="teacher weight 1.5: must be"):
        train(tiny_config.replace(teacher=str(tiny_run), teacher_weight=1.5), tmp_path / "student3", verbose=0)
    assert not (tmp_path / "student3" / "config.json").exists()


def test_a_distilled_run_trains_and_records_its_teacher(tiny_run, tiny_config, tmp_path):
    run_dir = tmp_path / "student"
    metrics = train(tiny_config.replace(teacher=str(tiny_run), teacher_weight=0.5), run_dir, verbose=0)
    assert 0 <= metrics["accuracy"] <= 1
    saved = Config.load(run_dir / "config.json")
    assert saved.teacher == str(tiny_run) and saved.teacher_weight == 0.5
    assert json.loads((run_dir / "history.json").read_text())["epochs_stage2"] == 1


def test_cosine_fine_tuning_decays_to_zero_and_the_head_stage_stays_constant():
    cosine = Config(fine_tune_schedule="cosine")
    schedule = learning_rate(2e-4, "stage2", 100, cosine)
    assert [round(float(schedule(step)), 9) for step in (0, 50, 100)] == [2e-4, 1e-4, 0.0]
    assert learning_rate(1e-3, "stage1", 100, cosine) == 1e-3
    assert learning_rate(2e-4, "stage2", 100, Config()) == 2e-4
    with pytest.raises(GalaxyClassError, match="schedule 'linear'"):
        learning_rate(2e-4, "stage2", 100, Config(fine_tune_schedule="linear"))


def test_a_weight_averaged_run_validates_and_keeps_the_averaged_weights(tiny_config, tmp_path):
    config = tiny_config.replace(weights="imagenet", image_size=64, fine_tune_epochs=3, steps_per_epoch=3)
    train(config.replace(weight_average=0.0), tmp_path / "plain", verbose=0)
    plain = json.loads((tmp_path / "plain" / "history.json").read_text())
    train(config.replace(weight_average=0.5), tmp_path / "averaged", verbose=0)
    history = json.loads((tmp_path / "averaged" / "history.json").read_text())
    fine_tuning = slice(history["fine_tune_start_epoch"], None)
    assert history["val_loss"][fine_tuning] != plain["val_loss"][fine_tuning], "validation saw the averages"
    assert history["val_loss"][:1] == plain["val_loss"][:1], "the head stage is not averaged"
    # The kept model is the one validated at the best fine-tuning epoch: the same accuracy on the same
    # validation images (steps_per_epoch batches of them, in split order; the temperature keeps the argmax).
    model, _, split = load_run(tmp_path / "averaged")
    g = open_galaxy10(config.data)
    seen = split["val"][:config.steps_per_epoch * config.batch_size]
    probs, labels = predict_file(model, g, seen)
    losses = history["val_loss"][fine_tuning]
    best = losses.index(min(losses))
    assert np.mean(probs.argmax(1) == labels) == pytest.approx(history["val_accuracy"][fine_tuning][best])


def test_no_model_averages_its_weights_by_default_and_older_runs_load_as_trained(tmp_path):
    assert Config(model="mobilenet").weight_average == 0.0
    assert Config(model="squeezenet").weight_average == 0.0
    saved = Config(model="mobilenet", weight_average=0.99)
    saved.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == saved
    older = json.loads((tmp_path / "config.json").read_text())
    del older["weight_average"]  # a run saved before the setting existed trained without an average
    (tmp_path / "config.json").write_text(json.dumps(older))
    assert Config.load(tmp_path / "config.json").weight_average == 0.0



def test_mobilenet_shifts_and_zooms_its_training_images_by_default_and_squeezenet_does_not(tiny_run, tmp_path):
    from galaxy_class.config import SHIFT_ZOOM

    assert Config().shift_zoom is None, "left to the model until a run starts"
    assert Config(model="mobilenet").with_model_defaults().shift_zoom == SHIFT_ZOOM["mobilenet"] == 0.1
    assert Config(model="squeezenet").with_model_defaults().shift_zoom == 0.0
    assert Config(model="squeezenet", shift_zoom=0.2).with_model_defaults().shift_zoom == 0.2
    assert Config(model="mobilenet", shift_zoom=0.0).with_model_defaults().shift_zoom == 0.0
    saved = Config.load(tiny_run / "config.json")
    assert saved.model == "mobilenet" and saved.shift_zoom == 0.1, "the run saves what it did"
    # A finished run is the same run as the defaults that made it, and not the same as one without shifts.
    assert settings_differences(saved, saved.replace(shift_zoom=None)) == []
    assert settings_differences(saved, saved.replace(shift_zoom=0.0)) == ["shift_zoom: 0.1 -> 0.0"]
    older = json.loads((tiny_run / "config.json").read_text())
    del older["shift_zoom"], older["colour_jitter"]  # saved before the settings existed: trained without
    (tmp_path / "config.json").write_text(json.dumps(older))
    assert Config.load(tmp_path / "config.json").shift_zoom == 0.0
    assert Config.load(tmp_path / "config.json").colour_jitter == 0.0

def _moving_means(model):
    import keras

    from galaxy_class.models import base_model

    return [keras.ops.convert_to_numpy(layer.moving_mean).copy() for layer in base_model(model).layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def test_batchnorm_statistics_follow_the_galaxies_only_while_the_base_fine_tunes_unless_frozen(tiny_config,
                                                                                                tmp_path):
    # Keras 3 hands the outer model's training flag to a nested model's layers, so calling the base with
    # training=False when building the model would not keep ImageNet's statistics: only trainable=False does.
    from galaxy_class.models import build_model
    from galaxy_class.train import set_trainable

    imagenet = _moving_means(build_model("mobilenet", 4, (69, 69, 3), image_size=64, weights="imagenet"))
    g = open_galaxy10(tiny_config.data)
    images, labels = read_images(g, np.arange(32)), np.eye(4)[g.labels[:32]]
    for stage, mode, moves in [("stage1", "adapt", False), ("stage2", "frozen", False), ("stage2", "adapt", True)]:
        model = build_model("mobilenet", 4, (69, 69, 3), image_size=64, weights="imagenet")
        set_trainable(model, stage, pretrained=True, batchnorm=mode)
        model.compile("adam", "categorical_crossentropy")
        model.train_on_batch(images, labels)
        moved = [not np.array_equal(a, b) for a, b in zip(_moving_means(model), imagenet)]
        assert all(moved) if moves else not any(moved), (stage, mode)

    config = tiny_config.replace(weights="imagenet", image_size=64)
    train(config.replace(fine_tune_batchnorm="frozen"), tmp_path / "frozen", verbose=0)
    frozen = _moving_means(load_run(tmp_path / "frozen")[0])
    assert all(np.array_equal(a, b) for a, b in zip(frozen, imagenet)), "a frozen run keeps ImageNet's statistics"
    assert Config.load(tmp_path / "frozen" / "config.json").fine_tune_batchnorm == "frozen"
    older = json.loads((tmp_path / "frozen" / "config.json").read_text())
    del older["fine_tune_batchnorm"]  # a run saved before the setting existed adapted its statistics
    assert Config.from_dict(older).fine_tune_batchnorm == "adapt" and Config().fine_tune_batchnorm == "frozen"
    with pytest.raises(GalaxyClassError, match="BatchNorm mode 'train'"):
        train(config.replace(fine_tune_batchnorm="train"), tmp_path / "bad", verbose=0)
    assert not (tmp_path / "bad").exists()


def test_squeezenets_own_batchnorm_layers_learn_whatever_the_setting(tiny_config, tmp_path):
    # SqueezeNet's ImageNet weights have no BatchNorm: the layers --batchnorm adds are new and must learn.
    config = tiny_config.replace(model="squeezenet", batchnorm=True, image_size=64, fine_tune_batchnorm="frozen",
                                 weights="imagenet")
    train(config, tmp_path / "run", verbose=0)
    means = _moving_means(load_run(tmp_path / "run")[0])
    assert means and all(np.any(m != 0) for m in means), "every added BatchNorm layer learned its statistics"


def test_a_finished_squeezenet_run_is_not_refused_over_a_batchnorm_setting_it_has_no_use_for():
    from galaxy_class.runs import settings_differences

    older = Config.from_dict({k: v for k, v in vars(Config(model="squeezenet")).items() if k != "fine_tune_batchnorm"})
    assert older.fine_tune_batchnorm == "adapt"
    assert settings_differences(older, Config(model="squeezenet")) == []
    assert settings_differences(older.replace(model="mobilenet"), Config(model="mobilenet")) == [
        "fine_tune_batchnorm: 'adapt' -> 'frozen'"]


def _recipes_benchmark():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("recipes_benchmark", ROOT / "benchmarks" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pooled_scores_and_their_sampling_interval_match_scikit_learn_on_each_matrix_of_a_stack():
    from sklearn.metrics import accuracy_score, f1_score

    recipes = _recipes_benchmark()
    rng = np.random.default_rng(3)
    matrices = rng.integers(0, 40, size=(5, 4, 4)) + np.diag([300, 50, 60, 5])
    accuracy, macro_f1 = recipes.scores(matrices)
    for matrix, acc, f1 in zip(matrices, accuracy, macro_f1):
        true, pred = np.nonzero(matrix)
        true, pred = np.repeat(true, matrix[true, pred]), np.repeat(pred, matrix[true, pred])
        assert acc == pytest.approx(accuracy_score(true, pred))
        assert f1 == pytest.approx(f1_score(true, pred, average="macro"))
        assert recipes.scores(matrix) == pytest.approx((acc, f1))
    (acc_low, acc_high), (f1_low, f1_high) = recipes.interval(matrices[0])
    assert acc_low < accuracy[0] < acc_high and f1_low < macro_f1[0] < f1_high
    # Four times the galaxies in the same proportions: about half the width.
    (narrow_low, narrow_high), _ = recipes.interval(4 * matrices[0])
    assert 0.4 < (narrow_high - narrow_low) / (acc_high - acc_low) < 0.6


@pytest.mark.parametrize("shift_zoom", [0.0, 0.1])
def test_distilled_batches_carry_each_images_class_weight_by_its_true_label(sample_file, shift_zoom):
    import tensorflow as tf

    from galaxy_class.batches import make_dataset
    from galaxy_class.data import open_galaxy10

    g = open_galaxy10(sample_file)
    indices = np.arange(0, 200)
    targets = np.zeros((g.n, 4), np.float32)
    targets[:, 3] = 1.0  # a teacher sure that every galaxy is a Merger
    weights = np.array([0.5, 2.0, 1.5, 9.0], np.float32)[g.labels]
    batches = list(make_dataset(g, indices, 64, shuffle=True, seed=1, targets=targets, sample_weights=weights,
                                shift_zoom=shift_zoom))
    plain = list(make_dataset(g, indices, 64, shuffle=True, seed=1, shift_zoom=shift_zoom))
    for (images, soft, w), (same_images, labels) in zip(batches, plain, strict=True):
        np.testing.assert_array_equal(images, same_images)
        np.testing.assert_array_equal(w, np.array([0.5, 2.0, 1.5, 9.0], np.float32)[np.asarray(labels)])
        assert soft.dtype == tf.float32 and np.all(np.asarray(soft)[:, 3] == 1)


def test_cross_validation_tests_every_galaxy_exactly_once_and_summarises_the_folds(sample_file, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import crossval

    from galaxy_class.data import load_split

    tiny = "tiny:model=mobilenet,weights=none,image_size=32,epochs=1,fine_tune_epochs=0,steps_per_epoch=2,tta=false"
    (name, values, p, _, _), = crossval.main(["--data", str(sample_file), "--folds", "3", "--recipe", tiny,
                                              "--root", str(tmp_path)])
    splits = [load_split(tmp_path / f"tiny-f{k}-s0" / "split.npz") for k in range(3)]
    tests = np.concatenate([s["test"] for s in splits])
    assert np.array_equal(np.sort(tests), np.arange(open_galaxy10(sample_file).n))
    for s in splits:
        assert not set(s["test"]) & (set(s["train"]) | set(s["val"])) and len(s["val"]) == round(0.1 * 1536)
    assert name == "tiny" and len(values["accuracy"]) == 3
    metrics = [json.loads((tmp_path / f"tiny-f{k}-s0" / "metrics.json").read_text()) for k in range(3)]
    assert values["accuracy"].mean() == pytest.approx(np.mean([m["accuracy"] for m in metrics]))
    assert f"{values['accuracy'].mean():.3f} ± {values['accuracy'].std(ddof=1):.3f}" in capsys.readouterr().out
