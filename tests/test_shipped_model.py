"""The trained model that ships in models/: a fresh clone classifies the bundled cutouts with it, and its model
card states what the run folder measured."""

import csv
import json
import re

import pytest

from conftest import ROOT
from galaxy_class.cli import main

RUN = ROOT / "models" / "mobilenet_gz1"
TFLITE = ROOT / "models" / "mobilenet_gz1.tflite"
CUTOUTS = sorted((ROOT / "data" / "cutouts").glob("*.jpeg"))


def answers(capsys, *args):
    assert main(["predict", *map(str, args), "--json"]) == 0
    return {r["image"].rsplit("/", 1)[-1]: r for r in json.loads(capsys.readouterr().out)}


def test_predict_classifies_the_bundled_cutouts_with_the_shipped_run_folder_and_its_int8_file(capsys):
    keras_answers = answers(capsys, RUN, *CUTOUTS)
    assert len(keras_answers) == len(CUTOUTS) == 8
    names = json.loads((RUN / "config.json").read_text())["class_names"]
    assert all(r["class"] in names and 0.25 < r["probability"] <= 1 for r in keras_answers.values())
    with open(ROOT / "data" / "cutouts" / "labels.csv", newline="") as f:
        truth = {row["file"]: row["class_name"] for row in csv.DictReader(f)}
    assert sum(keras_answers[name]["class"] == truth[name] for name in truth) >= 6
    one_view = answers(capsys, RUN, *CUTOUTS, "--one-view")
    lite = answers(capsys, TFLITE, *CUTOUTS, "--one-view")
    assert sum(lite[name]["class"] == one_view[name]["class"] for name in truth) >= 7


def test_the_model_card_states_the_run_folders_own_numbers():
    metrics = json.loads((RUN / "metrics.json").read_text())
    parity = json.loads((ROOT / "models" / "mobilenet_gz1.parity.json").read_text())
    card = (ROOT / "models" / "README.md").read_text()
    row = re.search(r"^\| mean of 8 flips and rotations .*$", card, re.M).group(0)
    assert row.split("|")[2:6] == [f" {metrics['accuracy']:.3f} ", f" {metrics['macro_f1']:.3f} ",
                                   f" {metrics['ece']:.3f} ", f" {metrics['log_loss']:.3f} "]
    row = re.search(r"^\| one view .*$", card, re.M).group(0)
    assert row.split("|")[2:4] == [f" {metrics['one_view']['accuracy']:.3f} ", f" {metrics['one_view']['macro_f1']:.3f} "]
    row = re.search(r"^\| int8 `.tflite`, one view .*$", card, re.M).group(0)
    assert row.split("|")[2:4] == [f" {parity['tflite_accuracy']:.3f} ", f" {parity['tflite_macro_f1']:.3f} "]
    assert f"{parity['top1_agreement']:.1%} of these galaxies" in card
    assert f"On the {metrics['n']} test galaxies" in card


def test_evaluating_the_shipped_run_on_its_own_test_split_repeats_its_metrics(dev_file, capsys, tmp_path):
    metrics = json.loads((RUN / "metrics.json").read_text())
    assert main(["evaluate", str(RUN), "--data", str(dev_file), "--json", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["split"] == "test" and again["n"] == metrics["n"] == 461
    assert again["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
    assert again["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-9)


def test_a_missing_run_folder_says_how_to_get_one(capsys, tmp_path):
    assert main(["predict", str(tmp_path / "nope"), str(CUTOUTS[0])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run folder" in err and "models/mobilenet_gz1" in err
    assert "galaxy-class train --model mobilenet" in err
