"""Duplicates where users meet them: a run never splits copies of one galaxy, evaluation on another file scores
only the galaxies the run has not seen, and inspect and make-dataset say what they found."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from galaxy_class.batches import dihedral
from galaxy_class.cli import main
from galaxy_class.data import load_split, load_split_record, open_galaxy10, read_images
from galaxy_class.runs import load_run
from galaxy_class.train import train
from test_integrity import write_file


@pytest.fixture(scope="module")
def sample(sample_file):
    g = open_galaxy10(sample_file)
    return read_images(g, np.arange(g.n)), np.array(g.labels), list(g.class_names)


@pytest.fixture(scope="module")
def copied(sample, tmp_path_factory):
    """The sample with its last 12 images replaced: 10 copies of earlier galaxies (half of them turned) and 2 blanks."""
    images, labels, names = sample[0].copy(), sample[1].copy(), sample[2]
    for k, i in enumerate(range(1524, 1534)):
        images[i], labels[i] = dihedral(images[10 * k][None], k % 8)[0], labels[10 * k]
    images[1534], images[1535] = 0, 77
    return write_file(tmp_path_factory.mktemp("data") / "copied.h5", images, labels, class_names=names)


def test_a_run_keeps_each_galaxys_copies_in_one_part_and_leaves_blank_images_out(copied, tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config.replace(data=str(copied), fine_tune_epochs=0), run, verbose=0)
    split = load_split(run / "split.npz")
    part_of = {int(i): name for name, indices in split.items() for i in indices}
    for k, copy in enumerate(range(1524, 1534)):
        assert part_of[10 * k] == part_of[copy], f"galaxy {10 * k} and its copy {copy} in different parts"
    assert 1534 not in part_of and 1535 not in part_of and len(part_of) == 1534
    record = load_split_record(run / "split.npz")
    assert list(record["left_out"]) == [1534, 1535] and len(record["group_ids"]) == 1536
    saved = json.loads((run / "config.json").read_text())["integrity"]
    assert saved["counts"]["exact_duplicate_groups"] == 10 and saved["counts"]["blank"] == 2
    assert any(line.startswith("blank images") and "1534, 1535" in line for line in saved["summary"])
    assert load_run(run)[1].integrity == saved


def test_a_clean_files_run_splits_as_before_and_records_nothing_more(tiny_run, sample_file):
    from galaxy_class.data import split_indices

    split, labels = load_split(tiny_run / "split.npz"), open_galaxy10(sample_file).labels
    expected = split_indices(labels, seed=0, fractions=(0.8, 0.1, 0.1))
    assert all(np.array_equal(split[part], expected[part]) for part in split)
    assert load_split_record(tiny_run / "split.npz") == {}


def test_evaluate_on_another_file_scores_only_the_galaxies_the_run_has_not_seen(tiny_run, sample, tmp_path, capsys):
    images, labels, names = sample
    split = load_split(tiny_run / "split.npz")
    seen, unseen = split["train"][:50], split["test"][:30]
    other_images = np.concatenate([dihedral(images[seen], 3), images[unseen]])
    other = write_file(tmp_path / "other.h5", other_images, np.concatenate([labels[seen], labels[unseen]]),
                       class_names=names)
    assert main(["evaluate", str(tiny_run), "--data", str(other), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["split"] == "unseen" and metrics["n"] == 30 and metrics["overlap"]["unseen"] == list(range(50, 80))
    assert "note: other.h5: 50 of its 80 images (62.5%) are among the" in out.err and "30 images" in out.out
    assert main(["evaluate", str(tiny_run), "--data", str(other), "--all", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 80


def test_inspect_reports_copies_and_blank_images(copied, capsys):
    assert main(["inspect", str(copied)]) == 0
    out = capsys.readouterr().out
    assert "exact duplicates (pixels, any flip or rotation): 10 groups, 20 images, e.g. 0 = 1524" in out
    assert "blank images (one colour, left out of the split): 2, e.g. 1534, 1535" in out


def test_make_dataset_reports_copies_among_the_cutouts_and_against_the_like_file(sample, sample_file, tmp_path,
                                                                                 capsys):
    images, labels, names = sample
    folder = tmp_path / "cutouts"
    folder.mkdir()
    chosen = [0, 1, 2, 0]  # the last is a copy of the first
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        for k, i in enumerate(chosen):
            Image.fromarray(images[i]).save(folder / f"g{k}.png")
            writer.writerow([f"g{k}.png", names[labels[i]]])
    assert main(["make-dataset", str(folder), "--out", str(tmp_path / "mine.h5"), "--like", str(sample_file)]) == 0
    err = capsys.readouterr().err
    assert "note: exact duplicates (pixels, any flip or rotation): 1 group, 2 images, e.g. 0 = 3" in err
    assert f"note: 4 of its 4 galaxies are already in {sample_file} (by pixels 4)" in err


def test_a_catalogue_of_another_file_says_how_many_of_its_galaxies_the_run_has_seen(tiny_run, sample, tmp_path,
                                                                                    capsys):
    images, labels, names = sample
    seen = load_split(tiny_run / "split.npz")["val"][:7]
    other = write_file(tmp_path / "other.h5", np.concatenate([images[seen], np.full((3, 69, 69, 3), 50, np.uint8)]),
                       np.concatenate([labels[seen], [0, 0, 0]]), class_names=names)
    assert main(["predict", str(tiny_run), "--data", str(other), "--out", str(tmp_path / "cat.csv")]) == 0
    err = capsys.readouterr().err
    assert "note: other.h5: 7 of its 10 images (70.0%) are among the" in err and "note: unseen: 0" in err
    assert len((tmp_path / "cat.csv").read_text().splitlines()) == 1 + 10
