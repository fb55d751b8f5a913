"""Temperature scaling: it finds the temperature that made probabilities over-confident, keeps every answer, and
the model itself carries it."""

import numpy as np
import pytest

from galaxy_class import calibration
from galaxy_class.predict import predict_proba
from galaxy_class.models import build_model


def calibrated_sample(n=20_000, k=4, seed=0):
    """Labels drawn from softmax(logits): probabilities that are right by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, k))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in probs])
    return probs, labels


def test_the_fitted_temperature_undoes_overconfidence():
    probs, labels = calibrated_sample()
    overconfident = calibration.with_temperature(probs, 1 / 2.5)  # logits multiplied by 2.5
    temperature = calibration.fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    fixed = calibration.with_temperature(overconfident, temperature)
    assert np.array_equal(fixed.argmax(1), overconfident.argmax(1)), "no answer changes"
    before, after = calibration.scores(overconfident, labels), calibration.scores(fixed, labels)
    assert before["ece"] > 0.1 and after["ece"] < 0.02
    assert after["log_loss"] < before["log_loss"] and after["brier"] < before["brier"]


def test_with_views_the_temperature_calibrates_their_mean():
    """Views that each add their own over-confident noise to the true logits: their mean is softer than any one
    of them, so the temperature that calibrates the mean is not the one-view temperature."""
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (20_000, 4))
    labels = np.array([rng.choice(4, p=p) for p in np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)])
    noisy = 2.0 * (logits + rng.normal(0, 0.5, (8, *logits.shape)))
    views = np.exp(noisy) / np.exp(noisy).sum(axis=2, keepdims=True)
    mean_fit, one_view_fit = calibration.fit_temperature(views, labels), calibration.fit_temperature(views[0], labels)
    assert mean_fit < one_view_fit
    assert calibration.fit_temperature(views[:1], labels) == pytest.approx(one_view_fit)

    def mean_ece(temperature):
        return calibration.scores(calibration.with_temperature(views, temperature).mean(axis=0), labels)["ece"]

    assert mean_ece(mean_fit) < 0.015 < 0.03 < mean_ece(one_view_fit)


def test_chance_ece_is_what_calibrated_probabilities_show_on_few_galaxies():
    probs, labels = calibrated_sample(seed=3)
    few, many = calibration.chance_ece(probs[:400], draws=300), calibration.chance_ece(probs, draws=50)
    assert many[0] < 0.015 and few[0] > 2 * many[0], "fewer galaxies, larger ECE by chance"
    assert few[1] <= calibration.scores(probs[:400], labels[:400])["ece"] <= few[2]


def test_scores_of_right_probabilities_are_near_perfect_calibration():
    probs, labels = calibrated_sample(seed=1)
    table = calibration.reliability(probs, labels)
    assert sum(table["count"]) == len(labels)
    assert calibration.scores(probs, labels)["ece"] < 0.015
    onehot = np.eye(4)[labels]
    assert calibration.scores(onehot, labels) == pytest.approx({"ece": 0.0, "brier": 0.0, "log_loss": 0.0}, abs=1e-6)


def test_the_temperature_lives_in_the_model():
    model = build_model("squeezenet", 4, (32, 32, 3), image_size=32, weights="none")
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    before = predict_proba(model, images)
    calibration.apply_temperature(model, 3.0)
    assert predict_proba(model, images) == pytest.approx(calibration.with_temperature(before, 3.0), abs=1e-5)


def test_a_runs_calibration_lowers_ece_on_held_out_dev_galaxies(pretrained_run, dev_file, sample_file):
    import json

    import h5py

    from galaxy_class.data import open_galaxy10
    from galaxy_class.predict import predict_file
    from galaxy_class.runs import load_run

    model, _, _ = load_run(pretrained_run)  # trained on the bundled sample, its temperature fitted on its val split
    temperature = json.loads((pretrained_run / "calibration.json").read_text())["temperature"]
    with h5py.File(sample_file, "r") as f:
        seen = set(f["objid"][()].tolist())
    with h5py.File(dev_file, "r") as f:
        unseen = np.flatnonzero([objid not in seen for objid in f["objid"][()].tolist()])[:1500]
    calibrated, labels = predict_file(model, open_galaxy10(dev_file), unseen)
    raw = calibration.with_temperature(calibrated, 1 / temperature)  # the model's probabilities before it
    assert abs(np.log(temperature)) > 0.1, "a two-step head is far from calibrated"
    assert calibration.scores(calibrated, labels)["ece"] < calibration.scores(raw, labels)["ece"]


def test_a_temperature_that_corrects_real_overconfidence_is_kept():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2000, 4)) * 1.5
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in truth])
    temperature, check = calibration.choose_temperature(calibration.with_temperature(truth, 1 / 3), labels)
    assert check["kept"] and temperature == check["fitted"] == pytest.approx(3, rel=0.1)
    assert check["left_out_gain"] > check["standard_error"] > 0


def test_a_gain_within_its_standard_error_is_not_enough_to_keep_a_temperature():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(150, 4)) * 1.5
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in truth])  # calibrated: any fitted T is chance
    temperature, check = calibration.choose_temperature(truth, labels)
    assert check["fitted"] != 1.0 and temperature == 1.0 and not check["kept"]
    assert check["left_out_gain"] <= check["standard_error"]
    assert calibration.choose_temperature(truth, labels, standard_errors=-np.inf)[0] == check["fitted"]


def test_a_temperature_that_does_not_hold_up_on_left_out_galaxies_is_dropped():
    probs = np.array([[0.9, 0.1]] * 29 + [[0.001, 0.999]])  # one confident mistake pulls any fit
    temperature, check = calibration.choose_temperature(probs, np.zeros(30, int))
    assert temperature == 1.0 and not check["kept"] and check["fitted"] != 1.0
    assert check["left_out_gain"] < 0
    assert "no temperature" in calibration.describe_temperature({"temperature": 1.0, "check": check})
