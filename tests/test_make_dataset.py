"""make-dataset: a folder of raw survey cutouts and a CSV become a Galaxy10-schema file, checked row by row first."""

import csv
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from galaxy_class import make_dataset as md
from galaxy_class.cli import main
from galaxy_class.data import open_galaxy10, read_images

DEV_CLASSES = "Elliptical,Spiral,Edge-on,Merger"
RECIPE = ["--raw-size", "423", "--crop", "207", "--resample", "box", "--size", "69"]


def run_cli(capsys, *args):
    code = main(["make-dataset", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path, header, *rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def dev_rows(dev_file, objids):
    """Indices of the dev file's rows for these objids, in the given order."""
    with h5py.File(dev_file, "r") as f:
        where = {objid: i for i, objid in enumerate(f["objid"][()])}
    return np.array([where[objid] for objid in objids])


def failed(capsys, *args):
    """The stderr lines of a make-dataset run, after checking it failed as a user error should: exit 2, no traceback."""
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), err
    return lines


def assert_nothing_written(folder, before):
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.fixture(scope="module")
def made_like(tmp_path_factory, dev_jpegs, dev_file):
    out = tmp_path_factory.mktemp("made") / "like.h5"
    assert main(["make-dataset", str(dev_jpegs), "--like", str(dev_file), "--out", str(out)]) == 0
    return out


def test_made_like_the_dev_file_holds_the_dev_files_images_labels_and_attributes(made_like, dev_jpegs, dev_file):
    rows = csv_rows(dev_jpegs / "labels.csv")
    objids = [int(r["file"].split(".")[0]) for r in rows]
    dev = open_galaxy10(dev_file)
    at = dev_rows(dev_file, objids)
    g = open_galaxy10(made_like)
    with h5py.File(made_like, "r") as f:
        images = f["images"][()]
        assert f["images"].chunks == (1, 69, 69, 3) and f["images"].compression == "gzip"
        assert f["ans"].dtype == np.uint8
        assert json.loads(f.attrs["cutout"]) == {"raw_size": 423, "crop": 207, "resample": "box"}
        assert "make-dataset" in f.attrs["source"] and dev_jpegs.name in f.attrs["source"]
        assert f["class_name"].asstr()[()].tolist() == [r["class_name"] for r in rows]
    expected = read_images(dev, at)
    difference = np.abs(images.astype(int) - expected)
    assert (difference == 0).mean() >= 0.99 and difference.mean() < 0.5
    assert g.n == 120 and g.class_names == dev.class_names
    assert g.labels.tolist() == dev.labels[at].tolist() == [int(r["label"]) for r in rows]


def test_explicit_recipe_options_make_the_same_file_as_like(made_like, dev_jpegs, tmp_path, capsys):
    out = tmp_path / "explicit.h5"
    code, stdout, _ = run_cli(capsys, dev_jpegs, "--out", out, "--class-names", DEV_CLASSES, *RECIPE)
    assert code == 0 and str(out) in stdout and "Merger" in stdout and " 20 " in stdout
    with h5py.File(out, "r") as f, h5py.File(made_like, "r") as like:
        assert np.array_equal(f["images"][()], like["images"][()]) and np.array_equal(f["ans"][()], like["ans"][()])
        assert f.attrs["cutout"] == like.attrs["cutout"]
        assert list(f.attrs["class_names"]) == DEV_CLASSES.split(",")


def test_a_made_file_streams_through_the_training_pipeline(made_like):
    from galaxy_class.batches import make_dataset

    g = open_galaxy10(made_like)
    images, labels = next(iter(make_dataset(g, range(g.n), batch_size=8)))
    assert images.shape == (8, 69, 69, 3) and images.dtype.name == "uint8"
    assert labels.numpy().tolist() == g.labels[:8].tolist()


def test_names_as_labels_become_sorted_classes_and_extra_columns_keep_their_types(dev_jpegs, tmp_path, capsys):
    files = sorted(p.name for p in dev_jpegs.glob("*.jpeg"))[:3]
    for name in files:
        shutil.copy(dev_jpegs / name, tmp_path)
    write_csv(tmp_path / "labels.csv", "file,label,objid,ra,survey",
              f"{files[0]},Spiral,{files[0][:-5]},150.25,sdss", f"{files[1]},Elliptical,{files[1][:-5]},,sdss",
              f"{files[2]},Spiral,{files[2][:-5]},9.5,dr7")
    out = tmp_path / "named.h5"
    assert run_cli(capsys, tmp_path, "--out", out, "--raw-size", "423", "--crop", "207", "--size", "23")[0] == 0
    g = open_galaxy10(out)
    assert g.class_names == ("Elliptical", "Spiral") and g.labels.tolist() == [1, 0, 1] and g.image_shape == (23, 23, 3)
    with h5py.File(out, "r") as f:
        assert f["objid"].dtype == np.int64 and f["objid"][()].tolist() == [int(n[:-5]) for n in files]
        assert f["ra"].dtype == np.float64 and f["ra"][0] == 150.25 and np.isnan(f["ra"][1])
        assert f["survey"].asstr()[()].tolist() == ["sdss", "sdss", "dr7"]


def test_an_image_of_another_size_keeps_the_field_of_view_and_is_counted(dev_jpegs, dev_file, tmp_path, capsys):
    name = sorted(p.name for p in dev_jpegs.glob("*.jpeg"))[0]
    shutil.copy(dev_jpegs / name, tmp_path)
    with Image.open(dev_jpegs / name) as raw:  # twice the pixels per arcsecond, same sky
        raw.resize((846, 846), Image.Resampling.NEAREST).save(tmp_path / "double.png")
    write_csv(tmp_path / "labels.csv", "file,label", f"{name},0", "double.png,0")
    out = tmp_path / "sizes.h5"
    code, _, err = run_cli(capsys, tmp_path, "--out", out, "--like", dev_file)
    assert code == 0 and "note: 1 of 2 images are 846 px, not 423 px raw cutouts" in err
    raw_cut, double_cut = read_images(open_galaxy10(out), [0, 1]).astype(int)
    assert np.abs(raw_cut - double_cut).mean() < 0.5


def test_integer_labels_without_class_names_ask_for_class_names_or_like(dev_jpegs, tmp_path, capsys):
    lines = failed(capsys, dev_jpegs, "--out", tmp_path / "x.h5", *RECIPE)
    assert len(lines) == 1 and "labels.csv" in lines[0] and "--class-names" in lines[0] and "--like" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_an_existing_out_file_is_refused_and_left_as_it_was(dev_jpegs, dev_file, tmp_path, capsys):
    out = tmp_path / "mine.h5"
    out.write_bytes(b"a user's file")
    lines = failed(capsys, dev_jpegs, "--out", out, "--like", dev_file)
    assert len(lines) == 1 and str(out) in lines[0] and "remove it or choose another --out" in lines[0]
    assert out.read_bytes() == b"a user's file" and len(list(tmp_path.iterdir())) == 1


def test_options_that_contradict_like_are_refused(dev_jpegs, dev_file, tmp_path, capsys):
    lines = failed(capsys, dev_jpegs, "--out", tmp_path / "x.h5", "--like", dev_file, "--size", "64")
    assert len(lines) == 1 and "--size 64 (it has 69)" in lines[0]


@pytest.fixture
def broken(dev_jpegs, tmp_path):
    """A folder with three good cutouts, a truncated JPEG and a text file named .png."""
    good = sorted(p.name for p in dev_jpegs.glob("*.jpeg"))[:3]
    for name in good:
        shutil.copy(dev_jpegs / name, tmp_path)
    data = (dev_jpegs / good[0]).read_bytes()
    (tmp_path / "truncated.jpeg").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.png").write_text("not a picture\n")
    return tmp_path, good


def test_every_bad_row_is_one_error_line_naming_its_csv_line_and_nothing_is_written(broken, capsys):
    folder, (a, b, c) = broken
    labels = write_csv(folder / "labels.csv", "file,label,objid",
                       f"{a},Elliptical,1",  # line 2: good
                       "123.jpeg,Spiral,2",  # 3
                       f"{b},Sprial,3",  # 4
                       f"{a},Spiral,4",  # 5
                       ",Spiral,5",  # 6
                       "notes.png,Merger,6",  # 7
                       f"{c},7,7",  # 8
                       f"{c},Merger")  # 9
    before = sorted(p.name for p in folder.iterdir())
    lines = failed(capsys, folder, "--out", folder / "out.h5", "--class-names", DEV_CLASSES, *RECIPE)
    expected = {3: f"123.jpeg: no such file in {folder}", 4: "label 'Sprial' is not one of the classes",
                5: f"{a}: listed again (first on line 2)", 6: "empty file name",
                7: "notes.png: not an image PIL can read", 8: "label 7 is out of range: 4 classes",
                9: "has 2 values, the header has 3 columns"}
    assert len(lines) == len(expected) + 1
    for line, (number, why) in zip(lines, expected.items()):
        assert line.startswith(f"error: {labels} line {number}: ") and why in line, line
    assert "did you mean 'Spiral'?" in lines[1]
    assert lines[-1] == f"error: {labels}: 7 of 8 rows are bad; nothing was written"
    assert_nothing_written(folder, before)


def test_an_image_that_fails_to_decode_aborts_the_file_and_leaves_nothing(broken, capsys):
    folder, (a, b, _) = broken
    shutil.copy(folder / "truncated.jpeg", folder / "truncated2.jpeg")
    labels = write_csv(folder / "labels.csv", "file,label", f"{a},0", "truncated.jpeg,1", f"{b},2", "truncated2.jpeg,3")
    before = sorted(p.name for p in folder.iterdir())
    lines = failed(capsys, folder, "--out", folder / "out.h5", "--class-names", DEV_CLASSES, *RECIPE)
    assert lines[0].startswith(f"error: {labels} line 3: truncated.jpeg: cannot read it as an image")
    assert lines[1].startswith(f"error: {labels} line 5: truncated2.jpeg: cannot read it as an image")
    assert lines[2] == f"error: {labels}: 2 of 4 rows are bad; nothing was written"
    assert_nothing_written(folder, before)


def test_ctrl_c_while_writing_leaves_nothing(broken, monkeypatch):
    folder, (a, b, c) = broken
    write_csv(folder / "labels.csv", "file,label", f"{a},0", f"{b},1", f"{c},2")
    before = sorted(p.name for p in folder.iterdir())
    calls = []

    def interrupted(path, name=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return Image.open(path).convert("RGB")

    monkeypatch.setattr(md, "read_rgb", interrupted)
    with pytest.raises(KeyboardInterrupt):
        md.make_dataset(folder, folder / "out.h5", class_names=DEV_CLASSES, size=69, raw_size=423, crop=207,
                        progress=False)
    assert_nothing_written(folder, before)


@pytest.mark.parametrize("content, why", [
    (b"", "is empty"),
    (b"file,label\n", "has a header but no rows"),
    (b"file,class\na.jpeg,Spiral\n", "no 'label' column (its columns: file, class)"),
    (b"file;label\na.jpeg;Spiral\n", "is the file separated by commas?"),
    (b"file,label,images\na.jpeg,Spiral,1\n", "column 'images' would replace the data set's own 'images'"),
    (b"file,label\n\xff\xfe\x00a\n", "not UTF-8 text"),
])
def test_a_csv_that_cannot_be_used_is_one_error_line(content, why, tmp_path, capsys):
    (tmp_path / "labels.csv").write_bytes(content)
    lines = failed(capsys, tmp_path, "--out", tmp_path / "out.h5", *RECIPE)
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'labels.csv'}: ") and why in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]


def test_a_missing_csv_says_to_pass_labels(tmp_path, capsys):
    lines = failed(capsys, tmp_path, "--out", tmp_path / "out.h5", *RECIPE)
    assert lines == [f"error: {tmp_path / 'labels.csv'}: no such file (pass the labels CSV with --labels)"]


def write_pngs(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (16, 16), (40 * i, 100, 200 - 40 * i)).save(folder / name)


TINY = ["--class-names", "A,B", "--raw-size", "16", "--size", "8"]


def test_files_outside_the_folder_are_refused_row_by_row_unless_allowed(tmp_path, capsys):
    folder, outside = tmp_path / "cutouts", tmp_path / "outside"
    write_pngs(folder, "a.png")
    write_pngs(outside, "x.png", "y.png", "z.png")
    (folder / "link.png").symlink_to(outside / "z.png")
    labels = write_csv(folder / "labels.csv", "file,label", "a.png,A", "../outside/x.png,B", f"{outside / 'y.png'},B",
                       "link.png,A")
    before = sorted(p.name for p in folder.iterdir())
    lines = failed(capsys, folder, "--out", folder / "out.h5", *TINY)
    for line, (number, name) in zip(lines, [(3, "../outside/x.png"), (4, outside / "y.png"), (5, "link.png")]):
        assert line == (f"error: {labels} line {number}: {name}: is outside {folder}; images must be in the folder "
                        f"(or allow files outside it with --allow-outside-folder)")
    assert lines[-1] == f"error: {labels}: 3 of 4 rows are bad; nothing was written" and len(lines) == 4
    assert_nothing_written(folder, before)
    made = md.make_dataset(folder, tmp_path / "out.h5", class_names="A,B", size=8, raw_size=16, progress=False,
                           allow_outside=True)
    assert made.n == 4 and open_galaxy10(made.path).labels.tolist() == [0, 1, 1, 0]


def test_one_file_listed_under_two_names_is_a_duplicate_row(tmp_path, capsys):
    write_pngs(tmp_path, "a.png", "b.png")
    (tmp_path / "alias.png").symlink_to("a.png")
    os.link(tmp_path / "b.png", tmp_path / "hard.png")
    (tmp_path / "sub").mkdir()
    labels = write_csv(tmp_path / "labels.csv", "file,label", "a.png,A", "b.png,B", "alias.png,A", "hard.png,B",
                       "sub/../a.png,B", "./b.png,A")
    lines = failed(capsys, tmp_path, "--out", tmp_path / "out.h5", *TINY)
    assert lines == [f"error: {labels} line 4: alias.png: listed again (first on line 2)",
                     f"error: {labels} line 5: hard.png: listed again (first on line 3)",
                     f"error: {labels} line 6: sub/../a.png: listed again (first on line 2)",
                     f"error: {labels} line 7: ./b.png: listed again (first on line 3)",
                     f"error: {labels}: 4 of 6 rows are bad; nothing was written"]
    assert not (tmp_path / "out.h5").exists()
