"""Catalogues: one row per galaxy, identifying columns kept, the same answers as predict, complete or resumed."""

import csv
import json

import numpy as np
import pytest

from conftest import ROOT
from galaxy_class import predict
from galaxy_class.catalogue import column, write_catalogue
from galaxy_class.cli import main
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.errors import GalaxyClassError
from galaxy_class.predict import predict_proba
from galaxy_class.runs import load_run


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_file_catalogue_has_a_row_per_galaxy_with_its_ids_and_the_models_probabilities(pretrained_run, sample_file,
                                                                                        tmp_path, capsys):
    assert main(["predict", str(pretrained_run), "--data", str(sample_file), "--out", str(tmp_path / "cat.csv")]) == 0
    assert "1,536 galaxies" in capsys.readouterr().out
    table = rows(tmp_path / "cat.csv")
    g = open_galaxy10(sample_file)
    model, config, _ = load_run(pretrained_run)
    assert len(table) == g.n and [int(r["index"]) for r in table] == list(range(g.n))
    assert {"objid", "true_class", "predicted_class", "probability", *map(column, g.class_names)} <= set(table[0])
    probs = predict_proba(model, read_images(g, range(0, g.n, 97)))
    written = np.array([[float(table[i][column(c)]) for c in g.class_names] for i in range(0, g.n, 97)])
    assert written == pytest.approx(probs, abs=1e-5)
    assert [table[i]["predicted_class"] for i in range(0, g.n, 97)] == [g.class_names[k] for k in probs.argmax(1)]
    assert not list(tmp_path.glob("*.part"))


def test_a_folder_catalogue_cuts_raw_cutouts_as_predict_does(pretrained_run, tmp_path, capsys):
    cutouts = sorted((ROOT / "data" / "cutouts").glob("*.jpeg"))
    assert main(["predict", str(pretrained_run), *map(str, cutouts), "--json", "--tta"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["predict", str(pretrained_run), "--data", str(ROOT / "data" / "cutouts"),
                 "--out", str(tmp_path / "cat.fits"), "--tta"]) == 0
    from astropy.table import Table

    table = Table.read(tmp_path / "cat.fits")
    assert list(table["file"]) == [p.name for p in cutouts]
    assert list(table["predicted_class"]) == [r["class"] for r in expected]
    assert np.all(np.asarray(table["tta_spread"]) >= 0)


def test_an_interrupted_catalogue_resumes_only_with_the_same_model_and_an_existing_one_is_kept(
        pretrained_run, sample_file, tmp_path, monkeypatch):
    model, config, _ = load_run(pretrained_run)
    whole = tmp_path / "whole.csv"
    write_catalogue(model, config, sample_file, whole, batch_size=500, progress=False, model_id="run A")
    predict_views, classified = predict.predict_views, []

    def killed_after(batches):
        def call(model, images, tta=False):
            if len(classified) == batches:
                raise KeyboardInterrupt  # stands in for a kill: the rows written so far stay in the .part file
            classified.append(len(images))
            return predict_views(model, images, tta)
        return call

    for out, resumed_by, expected in [("same.csv", "run A", 536), ("other.csv", "run B", 1536)]:
        classified.clear()
        monkeypatch.setattr(predict, "predict_views", killed_after(2))
        with pytest.raises(KeyboardInterrupt):
            write_catalogue(model, config, sample_file, tmp_path / out, batch_size=500, progress=False,
                            model_id="run A")
        assert not (tmp_path / out).exists(), "no catalogue that looks complete"
        classified.clear()
        monkeypatch.setattr(predict, "predict_views", killed_after(99))
        write_catalogue(model, config, sample_file, tmp_path / out, batch_size=500, progress=False,
                        model_id=resumed_by)
        assert (tmp_path / out).read_text() == whole.read_text()
        assert sum(classified) == expected, f"{out}: the rows of the same model only are continued"
    assert not list(tmp_path.glob("*.part*")), "no .part file or its stamp left behind"
    with pytest.raises(GalaxyClassError, match="already exists"):
        write_catalogue(model, config, sample_file, whole, progress=False)


@pytest.mark.parametrize("args, words", [
    (["--data", "{tmp}/missing.h5", "--out", "{tmp}/cat.csv"], "missing.h5: no such file"),
    (["--data", "{sample}", "--out", "{tmp}/cat.txt"], ".csv or .fits"),
    (["--data", "{sample}", "--out", "{tmp}/mine.csv"], "mine.csv: already exists"),
    (["--data", "{sample}"], "needs both --data"),
    (["{tmp}/galaxy.png", "--data", "{sample}", "--out", "{tmp}/cat.csv"], "either image files or --data"),
])
def test_bad_catalogue_arguments_are_one_error_line_and_touch_nothing(tiny_run, sample_file, tmp_path, capsys,
                                                                      args, words):
    (tmp_path / "mine.csv").write_text("my own notes\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    filled = [a.format(tmp=tmp_path, sample=sample_file) for a in args]
    assert main(["predict", str(tiny_run), *filled]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_overwrite_continues_the_unfinished_rows_of_the_same_catalogue_and_says_so(pretrained_run, sample_file,
                                                                                   tmp_path, monkeypatch, capsys):
    model, config, _ = load_run(pretrained_run)
    whole = tmp_path / "whole.csv"
    write_catalogue(model, config, sample_file, whole, batch_size=500, progress=False, model_id="run A")
    predict_views, calls = predict.predict_views, []

    def killed_after_two(model, images, tta=False):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(images))
        return predict_views(model, images, tta)

    out = tmp_path / "cat.csv"
    out.write_text("an older catalogue\n")
    monkeypatch.setattr(predict, "predict_views", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        write_catalogue(model, config, sample_file, out, batch_size=500, overwrite=True, progress=False,
                        model_id="run A")
    assert len((tmp_path / "cat.csv.part").read_text().splitlines()) == 1 + 1000
    monkeypatch.setattr(predict, "predict_views", predict_views)
    write_catalogue(model, config, sample_file, out, batch_size=500, overwrite=True, progress=False, model_id="run A")
    assert "continuing after the 1,000 of 1,536 galaxies already classified" in capsys.readouterr().err
    assert out.read_text() == whole.read_text()


def test_resume_counts_rows_as_the_csv_reader_does(tmp_path):
    from galaxy_class.catalogue import _rows_done

    header = ["file", "predicted_class"]
    names = ["a\u2028b.png", "c\x0cd.png", "e\x85f.png", 'g"h,i.png', "j\nk.png", "plain.png"]
    part = tmp_path / "cat.csv.part"
    with open(part, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerows([header, *([name, "Spiral"] for name in names)])
    assert _rows_done(part, header) == 6


@pytest.mark.parametrize("out, words", [
    ("{tmp}/folder.csv", "is a folder"),
    ("{tmp}/missing/cat.csv", "missing: no such folder"),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tiny_run, sample_file, tmp_path, capsys, out,
                                                                      words):
    (tmp_path / "folder.csv").mkdir()
    code = main(["predict", str(tiny_run), "--data", str(sample_file), "--out", out.format(tmp=tmp_path),
                 "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert [p.name for p in tmp_path.iterdir()] == ["folder.csv"] and not any((tmp_path / "folder.csv").iterdir())


def test_a_file_of_another_image_size_is_one_error_line(tiny_run, sample_file, tmp_path, capsys):
    import h5py

    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((4, 80, 80, 3), np.uint8)
        f["ans"] = np.array([0, 1, 2, 3])
        f.attrs["class_names"] = list(open_galaxy10(sample_file).class_names)
    for command in (["predict", str(tiny_run), "--data", str(path), "--out", str(tmp_path / "cat.csv")],
                    ["evaluate", str(tiny_run), "--data", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "80x80" in err[0] and "69x69" in err[0], err
