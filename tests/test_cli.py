import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from galaxy_class.cli import main
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.runs import load_run


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert str(w) in lines[0]
    assert "Traceback" not in err


def test_inspect_prints_count_shape_and_classes(capsys, sample_file):
    code, out, _ = run_cli(capsys, "inspect", sample_file)
    g = open_galaxy10(sample_file)
    assert code == 0 and str(g.n) in out
    for name, count in zip(g.class_names, g.class_counts()):
        assert name in out and str(count) in out


def test_train_on_a_missing_file_is_one_error_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--model", "mobilenet", "--data", tmp_path / "nope.h5",
                           "--out", tmp_path / "run")
    assert_one_error_line(code, err, "nope.h5")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, words", [
    (["--teacher", "NOPE"], ["NOPE", "no such run folder"]),
    (["--teacher", "TINY", "--seed", "3"], ["TINY", "another split"]),
    (["--weight-average", "1"], ["weight average momentum 1.0"]),
    (["--shift-zoom", "0.6"], ["shift and zoom 0.6"]),
    (["--colour-jitter", "-0.1"], ["colour jitter -0.1"]),
])
def test_train_with_an_unusable_recipe_is_one_error_line_and_writes_nothing(capsys, tiny_run, tmp_path, flags,
                                                                               words):
    names = {"NOPE": tmp_path / "nope", "TINY": tiny_run}
    code, _, err = run_cli(capsys, "train", "--model", "mobilenet", "--data", "sample", "--out", tmp_path / "run",
                           *[names.get(f, f) for f in flags])
    assert_one_error_line(code, err, *[names.get(w, w) for w in words])
    assert not (tmp_path / "run").exists()


def test_train_into_a_finished_run_is_refused(capsys, tiny_run):
    code, _, err = run_cli(capsys, "train", "--model", "mobilenet", "--data", "sample", "--out", tiny_run)
    assert_one_error_line(code, err, tiny_run, "--overwrite")


def test_evaluate_writes_json_and_confusion_figure(capsys, tiny_run, tmp_path):
    code, out, _ = run_cli(capsys, "evaluate", tiny_run, "--json", tmp_path / "m.json", "--figures", tmp_path)
    assert code == 0 and "accuracy" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "class_names", "n"} <= set(m)
    assert m["split"] == "test" and m["n"] == len(load_run(tiny_run)[2]["test"])
    assert (tmp_path / "mobilenet_confusion_matrix.png").stat().st_size > 10_000


def test_evaluate_on_another_file_scores_the_galaxies_the_run_has_not_seen_or_with_all_every_one(capsys, tiny_run,
                                                                                                  dev_file, tmp_path):
    seen = sum(len(load_run(tiny_run)[2][part]) for part in ("train", "val"))  # the sample is part of the dev file
    code, _, err = run_cli(capsys, "evaluate", tiny_run, "--data", dev_file, "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert code == 0 and m["split"] == "unseen" and m["n"] == 4608 - seen and m["overlap"]["seen"] == seen
    assert f"{seen} of its 4608 images" in err
    code, _, _ = run_cli(capsys, "evaluate", tiny_run, "--data", dev_file, "--all", "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert code == 0 and m["split"] == "all" and m["n"] == 4608


def test_evaluate_errors(capsys, tmp_path, tiny_run):
    assert_one_error_line(*run_cli(capsys, "evaluate", tmp_path / "no_run")[::2], "no_run")
    (tmp_path / "empty_run").mkdir()
    assert_one_error_line(*run_cli(capsys, "evaluate", tmp_path / "empty_run")[::2], "empty_run")
    other = tmp_path / "ten_classes.h5"
    import h5py

    with h5py.File(other, "w") as f:
        f["images"] = np.zeros((10, 69, 69, 3), np.uint8)
        f["ans"] = np.arange(10)
    assert_one_error_line(*run_cli(capsys, "evaluate", tiny_run, "--data", other)[::2], "ten_classes.h5", "classes")


def test_predict_png_gives_the_models_class(capsys, tiny_run, sample_file, tmp_path):
    model, config, split = load_run(tiny_run)
    images = read_images(open_galaxy10(sample_file), split["test"][:3])
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"galaxy{i}.png")
        Image.fromarray(image).save(paths[-1])
    code, out, _ = run_cli(capsys, "predict", tiny_run, *paths, "--json")
    assert code == 0
    results = json.loads(out)
    expected = np.asarray(model(images)).argmax(axis=1)
    assert [r["class"] for r in results] == [config.class_names[k] for k in expected]
    assert all(sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4) for r in results)


def test_predict_a_non_image_is_one_error_line(capsys, tiny_run, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert_one_error_line(*run_cli(capsys, "predict", tiny_run, bad)[::2], "notes.png")


def test_real_process_exits_2_without_traceback_and_debug_shows_it(tmp_path):
    cmd = [sys.executable, "-m", "galaxy_class", "inspect", str(tmp_path / "missing.h5")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    out = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" in out.stderr


def test_debug_is_accepted_after_the_command_too(capsys, tmp_path):
    for argv in (["--debug", "inspect", tmp_path / "x.h5"], ["inspect", tmp_path / "x.h5", "--debug"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_a_file_given_as_run_folder_is_named_as_such(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert_one_error_line(*run_cli(capsys, "evaluate", notes)[::2], "notes.txt", "not a run folder")


def test_one_bad_image_among_several_is_reported_before_any_prediction(capsys, tiny_run, sample_file, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(read_images(open_galaxy10(sample_file), [0])[0]).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    code, out, err = run_cli(capsys, "predict", tiny_run, good, bad)
    assert_one_error_line(code, err, "bad.jpg")
    assert out == ""


def test_every_option_explains_itself_and_every_command_ends_with_examples():
    import argparse

    from galaxy_class.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"inspect", "make-dataset", "train", "evaluate", "predict", "export", "serve"}
    for name, command in commands.items():
        assert command.epilog.startswith("examples:\n  galaxy-class "), name
        for action in command._actions:
            if action.help != argparse.SUPPRESS:
                assert action.help, f"{name} {action.dest} has no help"
        shown = command.format_help()
        for action in command._actions:
            if action.help != argparse.SUPPRESS and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in " ".join(shown.split()), f"{name} {action.dest}"


def test_commands_print_no_tensorflow_log_lines(tiny_run, sample_file):
    images = [sample_file.parent / "cutouts" / name for name in sorted(p.name for p in
                                                                      (sample_file.parent / "cutouts").glob("*.jpeg"))]
    done = subprocess.run([sys.executable, "-m", "galaxy_class", "predict", str(tiny_run), str(images[0])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(images[0])) and len(done.stdout.splitlines()) == 1
    assert [line for line in done.stderr.splitlines() if not line.startswith("note: ")] == [], done.stderr
    debug = subprocess.run([sys.executable, "-m", "galaxy_class", "--debug", "predict", str(tiny_run), str(images[0])],
                           capture_output=True, text=True, timeout=300)
    assert debug.returncode == 0 and done.stdout == debug.stdout
