"""Specification of galaxy_class.integrity and the split that never leaks: duplicates under any flip or rotation,
galaxies listed twice (sky positions), blank images, groups kept in one part, overlap between two files."""

import hashlib
import json

import h5py
import numpy as np
import pytest

from galaxy_class.batches import dihedral
from galaxy_class.data import (
    SPLITS,
    load_split,
    load_split_record,
    open_galaxy10,
    read_images,
    save_split,
    split_indices,
)
from galaxy_class.errors import GalaxyClassError
from galaxy_class.integrity import _view_sums, check, image_fingerprints, overlap, position_twins

ARCSEC = 1 / 3600


def write_file(path, images, labels, ra=None, dec=None, chunked=True, class_names=None):
    """A Galaxy10-schema file: one gzip chunk per image (Galaxy10's layout), or contiguous."""
    with h5py.File(path, "w") as f:
        if chunked:
            f.create_dataset("images", data=images, chunks=(1, *images.shape[1:]), compression="gzip")
        else:
            f.create_dataset("images", data=images)
        f.create_dataset("ans", data=np.asarray(labels, np.uint8))
        if ra is not None:
            f.create_dataset("ra", data=ra)
            f.create_dataset("dec", data=dec)
        f.attrs["class_names"] = class_names or ["Elliptical", "Spiral", "Edge-on", "Merger"]
    return path


def random_sky(rng, n):
    """Positions spread uniformly over the sphere, in degrees: nearest neighbours degrees apart for ~1,500."""
    return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


def offset(ra, dec, arcsec, along_ra=False):
    """A position `arcsec` from (ra, dec), north or east."""
    if along_ra:
        return ra + arcsec * ARCSEC / np.cos(np.radians(dec)), dec
    return ra, dec + arcsec * ARCSEC


@pytest.fixture(scope="module")
def sample(sample_file):
    g = open_galaxy10(sample_file)
    return read_images(g, np.arange(g.n)), np.array(g.labels)


@pytest.fixture(scope="module")
def planted(sample, tmp_path_factory):
    """The sample's 1,536 real images with planted duplicates, position twins, blanks and a label conflict."""
    images, labels = sample[0].copy(), sample[1].copy()
    rng = np.random.default_rng(0)
    ra, dec = random_sky(rng, len(labels))
    images[1500], labels[1500] = images[10], labels[10]  # exact copies: 10 = 1500 = 1503
    images[1503], labels[1503] = images[10], labels[10]
    images[1501], labels[1501] = dihedral(images[22][None], 1)[0], labels[22]  # turned a quarter
    images[1502], labels[1502] = dihedral(images[35][None], 4)[0], (labels[35] + 1) % 4  # flipped, relabelled
    ra[900], dec[900] = offset(ra[10], dec[10], 0.5)  # a position twin joins the group of 10
    labels[900] = labels[10]
    ra[200], dec[200] = offset(ra[100], dec[100], 0.5)
    ra[400], dec[400] = offset(ra[300], dec[300], 0.5, along_ra=True)
    ra[600], dec[600] = offset(ra[500], dec[500], 5)  # 5″ apart: a twin at 10″, not at 1″
    labels[[200, 400, 600]] = labels[[100, 300, 500]]
    images[700] = 0  # blank: black, grey, one colour
    images[701] = 128
    images[702] = (200, 30, 10)
    images[703] = 0  # black but for one pixel: not blank
    images[703, 30, 40, 1] = 1
    path = write_file(tmp_path_factory.mktemp("planted") / "planted.h5", images, labels, ra, dec)
    return open_galaxy10(path)


@pytest.fixture(scope="module")
def report(planted):
    return check(planted)


# --- fingerprints -------------------------------------------------------------------------------


def test_view_sums_are_the_row_and_column_sums_of_each_flip_and_rotation(sample):
    image = sample[0][7]
    rows, cols = image.sum(axis=(1, 2)), image.sum(axis=(0, 2))
    for k, (view_rows, view_cols) in enumerate(_view_sums(rows, cols)):
        view = dihedral(image[None], k)[0]
        assert np.array_equal(view_rows, view.sum(axis=(1, 2))) and np.array_equal(view_cols, view.sum(axis=(0, 2)))


def test_fingerprint_is_the_same_under_every_flip_and_rotation_and_differs_between_images(sample, tmp_path):
    images = sample[0][:6]
    views = np.concatenate([dihedral(images, k) for k in range(8)])  # view k of image i at row 6k + i
    prints = image_fingerprints(open_galaxy10(write_file(tmp_path / "views.h5", views, np.zeros(len(views)))))
    digests = prints.digests.reshape(8, 6)
    assert (digests == digests[0]).all() and len(np.unique(digests[0])) == 6
    # Equal digests and views: the same pixels as stored; a view apart: a flip or rotation apart.
    assert all(len(np.unique(prints.views.reshape(8, 6)[:, i])) == 8 for i in range(6))
    assert not prints.blank.any()


def test_fingerprints_do_not_depend_on_how_the_file_stores_its_images(sample, tmp_path):
    images, labels = sample[0][:50], sample[1][:50]
    chunked = image_fingerprints(open_galaxy10(write_file(tmp_path / "chunked.h5", images, labels)))
    contiguous = image_fingerprints(open_galaxy10(write_file(tmp_path / "flat.h5", images, labels, chunked=False)))
    assert np.array_equal(chunked.digests, contiguous.digests) and np.array_equal(chunked.views, contiguous.views)


def test_non_square_images_match_their_rotations(sample, tmp_path):
    image = sample[0][3][:, :50]  # 69 x 50
    turned = np.rot90(image, 1)  # 50 x 69: a file of its own
    a = image_fingerprints(open_galaxy10(write_file(tmp_path / "a.h5", image[None], [0])))
    b = image_fingerprints(open_galaxy10(write_file(tmp_path / "b.h5", np.ascontiguousarray(turned)[None], [0])))
    assert a.digests[0] == b.digests[0]


# --- check --------------------------------------------------------------------------------------


def test_check_finds_the_planted_duplicates_under_flips_and_rotations(report):
    assert [g.tolist() for g in report.pixel_groups] == [[10, 1500, 1503], [22, 1501], [35, 1502]]
    assert report.turned == [False, True, True]


def test_check_finds_position_twins_within_the_tolerance_only(report, planted):
    assert report.positions_checked
    assert report.position_pairs.tolist() == [[10, 900], [100, 200], [300, 400]]  # not 500 ~ 600, 5″ apart
    assert np.allclose(report.separations, 0.5, atol=1e-3)
    wider = check(planted, tolerance_arcsec=10)
    assert wider.position_pairs.tolist() == [[10, 900], [100, 200], [300, 400], [500, 600]]
    assert wider.separations[-1] == pytest.approx(5, abs=1e-3)


def test_position_twins_on_their_own():
    ra, dec = np.array([10.0, 10.0, 359.9999, 0.0001, 50.0, np.nan]), np.array([0.0, 0.0, 80.0, 80.0, -90.0, 0.0])
    ra[1] += 0.9 * ARCSEC
    pairs, arcsec = position_twins(ra, dec, 1.0)
    # across ra = 0 at dec 80: 0.0002 degrees of ra are 0.125″; a NaN position pairs with nothing
    assert pairs.tolist() == [[0, 1], [2, 3]]
    assert arcsec == pytest.approx([0.9, 0.0002 * 3600 * np.cos(np.radians(80))], rel=1e-3)
    assert position_twins(ra, dec, 0.5)[0].tolist() == [[2, 3]]


def test_check_flags_constant_images_as_blank_and_nothing_else(report):
    assert report.blank.tolist() == [700, 701, 702]  # 703 differs in one pixel
    assert report.left_out.tolist() == [700, 701, 702]


def test_groups_join_pixel_duplicates_and_position_twins(report):
    assert [g.tolist() for g in report.groups] == [[10, 900, 1500, 1503], [22, 1501], [35, 1502], [100, 200],
                                                   [300, 400]]
    ids = report.group_ids
    assert len(ids) == 1536 and all(len(np.unique(ids[g])) == 1 for g in report.groups)
    assert len(np.unique(ids)) == 1536 - sum(len(g) - 1 for g in report.groups)  # everyone else alone


def test_groups_whose_labels_disagree_are_reported(report):
    assert [g.tolist() for g in report.label_conflicts] == [[35, 1502]]


def test_summary_names_counts_and_first_indices(report):
    lines = report.summary()
    assert lines[0] == ("exact duplicates (pixels, any flip or rotation): 3 groups, 7 images, "
                        "e.g. 10 = 1500 = 1503, 22 = 1501 (flipped or rotated), 35 = 1502 (flipped or rotated)")
    assert lines[1] == ("same sky position within 1″: 3 pairs, "
                        "e.g. 10 ~ 900 (0.50″), 100 ~ 200 (0.50″), 300 ~ 400 (0.50″)")
    assert lines[2] == "blank images (one colour, left out of the split): 3, e.g. 700, 701, 702"
    assert lines[3].startswith("duplicate groups whose labels disagree: 1, e.g. 35 (")
    assert lines[4] == "kept whole in one part of the split: 5 groups, 12 images"


def test_summary_says_which_position_twins_are_also_the_same_pixels(sample, tmp_path):
    images, labels = sample[0][:6].copy(), sample[1][:6].copy()
    images[1], labels[1] = dihedral(images[0][None], 2)[0], labels[0]
    ra, dec = random_sky(np.random.default_rng(2), 6)
    ra[1], dec[1] = ra[0], dec[0]
    ra[3], dec[3] = offset(ra[2], dec[2], 0.2)
    lines = check(open_galaxy10(write_file(tmp_path / "both.h5", images, labels, ra, dec))).summary()
    assert lines[0] == ("exact duplicates (pixels, any flip or rotation): 1 group, 2 images, "
                        "e.g. 0 = 1 (flipped or rotated)")
    assert lines[1] == ("same sky position within 1″: 2 pairs (1 of them also the same pixels), "
                        "e.g. 0 ~ 1 (0.00″), 2 ~ 3 (0.20″)")


def test_to_dict_is_json_ready_with_counts_and_indices(report):
    record = json.loads(json.dumps(report.to_dict()))
    assert record["counts"] == {"images": 1536, "exact_duplicate_groups": 3, "exact_duplicate_images": 7,
                                "position_pairs": 3, "blank": 3, "label_conflicts": 1, "groups": 5,
                                "grouped_images": 12}
    assert record["left_out"] == [700, 701, 702] and record["grouped"][0] == [10, 900, 1500, 1503]
    assert record["exact_duplicates"][1] == [22, 1501] and record["position_pairs"][0] == [10, 900]


def test_a_clean_file_reports_nothing(sample_file):
    report = check(open_galaxy10(sample_file))
    assert not report.pixel_groups and not report.groups and not len(report.blank) and not report.positions_checked
    assert report.summary()[1] == "same sky position within 1″: not checked (the file has no ra/dec columns)"
    assert len(np.unique(report.group_ids)) == 1536


def test_a_negative_tolerance_is_refused(planted):
    with pytest.raises(GalaxyClassError, match="tolerance -1 arcsec"):
        check(planted, tolerance_arcsec=-1)


def test_positions_in_other_units_are_refused_naming_the_file(sample, tmp_path):
    path = write_file(tmp_path / "radians.h5", sample[0][:4], [0, 1, 2, 3], ra=np.zeros(4), dec=[0, 1, 2, 3e5])
    with pytest.raises(GalaxyClassError, match=f"{path}: column 'dec' has 1 values beyond ±90 degrees"):
        check(open_galaxy10(path))


# --- the split ----------------------------------------------------------------------------------


def split_digest(split):
    return hashlib.sha256(b"".join(split[name].tobytes() for name in SPLITS)).hexdigest()[:16]


@pytest.mark.parametrize("seed, fractions, digest", [
    (0, (0.8, 0.1, 0.1), "25b09f237bcbc0a1"),
    (1, (0.8, 0.1, 0.1), "43a0b8762b1da2fa"),
    (7, (0.7, 0.15, 0.15), "2863dfb02407b009"),
])
def test_a_clean_file_splits_exactly_as_before(sample_file, seed, fractions, digest):
    g = open_galaxy10(sample_file)
    report = check(g)
    # Digests of the split made before duplicates were grouped: runs on clean files keep their split.
    assert split_digest(split_indices(g.labels, seed, fractions)) == digest
    assert split_digest(split_indices(g.labels, seed, fractions, report.group_ids, report.left_out)) == digest


def assert_no_group_crosses(split, groups):
    """No two images of a group in different parts (images left out are in none)."""
    part_of = {int(i): name for name, part in split.items() for i in part}
    for group in groups:
        assert len({part_of[int(i)] for i in group if int(i) in part_of}) <= 1, f"group {group} crosses parts"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_grouped_split_keeps_every_group_in_one_part_and_blanks_in_none(report, seed):
    split = split_indices(report.labels, seed, groups=report.group_ids, leave_out=report.left_out)
    assert_no_group_crosses(split, report.groups)
    everything = np.concatenate(list(split.values()))
    assert np.array_equal(np.sort(everything), np.setdiff1d(np.arange(1536), [700, 701, 702]))
    assert all(part.dtype == np.int64 and np.all(np.diff(part) > 0) for part in split.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_of_many_groups_is_stratified_and_sized_as_asked(sample, seed):
    labels = sample[1]
    rng = np.random.default_rng(seed)
    # 300 groups of 2 to 4 images of the same class, as duplicates are, and 40 blanks.
    groups = np.arange(len(labels))
    for first in rng.choice(len(labels), 300, replace=False):
        mates = rng.choice(np.flatnonzero(labels == labels[first]), rng.integers(1, 4), replace=False)
        groups[mates] = groups[first]
    leave_out = rng.choice(len(labels), 40, replace=False)
    split = split_indices(labels, seed, groups=groups, leave_out=leave_out)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    assert_no_group_crosses(split, [m for m in members if len(m) > 1])
    assert not np.isin(np.concatenate(list(split.values())), leave_out).any()
    kept = np.setdiff1d(np.arange(len(labels)), leave_out)
    overall = np.bincount(labels[kept], minlength=4) / len(kept)
    for name, fraction in zip(SPLITS, (0.8, 0.1, 0.1)):
        part = split[name]
        assert len(part) == pytest.approx(fraction * len(kept), rel=0.08)
        assert np.allclose(np.bincount(labels[part], minlength=4) / len(part), overall, atol=0.03)


def test_leaving_out_without_groups_splits_the_rest_as_before(sample):
    labels = sample[1]
    leave_out = [3, 30, 300]
    split = split_indices(labels, 0, leave_out=leave_out)
    kept = np.setdiff1d(np.arange(len(labels)), leave_out)
    plain = split_indices(labels[kept], 0)
    assert all(np.array_equal(split[name], kept[plain[name]]) for name in SPLITS)


def test_grouped_split_of_tiny_data_does_not_crash_or_explains(sample):
    labels = [0, 1, 2, 3] * 3  # every class smaller than the 10 folds a test part of 0.1 needs
    split = split_indices(labels, 0, groups=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert_no_group_crosses(split, [[0, 1]])
    assert all(len(part) for part in split.values())
    with pytest.raises(GalaxyClassError, match="cannot split 4 images in groups of duplicates"):
        split_indices([0, 1, 0, 1], 0, groups=[0, 0, 0, 1])


def test_saved_split_records_what_was_grouped_and_left_out(report, tmp_path):
    split = split_indices(report.labels, 0, groups=report.group_ids, leave_out=report.left_out)
    save_split(split, tmp_path / "split.npz", left_out=report.left_out, group_ids=report.group_ids)
    loaded = load_split(tmp_path / "split.npz")
    assert loaded.keys() == split.keys() and all(np.array_equal(loaded[k], split[k]) for k in split)
    record = load_split_record(tmp_path / "split.npz")
    assert record["left_out"].tolist() == [700, 701, 702] and np.array_equal(record["group_ids"], report.group_ids)
    save_split(split, tmp_path / "plain.npz")
    assert load_split_record(tmp_path / "plain.npz") == {}


# --- overlap between files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_files(sample, tmp_path_factory):
    """A run's file (rows 0-999 of the sample, the run trained on 0-599) and another that shares galaxies with it."""
    images, labels = sample
    rng = np.random.default_rng(1)
    ra, dec = random_sky(rng, 1536)
    folder = tmp_path_factory.mktemp("overlap")
    ours = write_file(folder / "ours.h5", images[:1000], labels[:1000], ra[:1000], dec[:1000])
    # Theirs: 0-39 seen images (20-39 turned), 40-49 images of ours the run did not train on, 50-59 other images at
    # seen positions (other cutouts of seen galaxies), 60-61 blank, 62-199 new galaxies.
    rows = np.concatenate([np.arange(0, 40), np.arange(700, 710), np.arange(1000, 1150)])
    theirs_images, theirs_ra, theirs_dec = images[rows].copy(), ra[rows].copy(), dec[rows].copy()
    theirs_images[20:40] = np.stack([dihedral(image[None], k % 7 + 1)[0] for k, image in enumerate(images[20:40])])
    theirs_ra[50:60], theirs_dec[50:60] = offset(ra[100:110], dec[100:110], 0.3)
    theirs_images[60], theirs_images[61] = 0, 255
    theirs = write_file(folder / "theirs.h5", theirs_images, labels[rows], theirs_ra, theirs_dec)
    return open_galaxy10(ours), open_galaxy10(theirs)


def test_overlap_counts_seen_galaxies_by_pixels_and_position(two_files):
    ours, theirs = two_files
    found = overlap(ours, np.arange(600), theirs)
    assert found.by_pixels.tolist() == list(range(40))
    assert found.by_position.tolist() == [*range(40), *range(50, 60)]
    assert found.blank.tolist() == [60, 61]
    assert found.unseen.tolist() == [*range(40, 50), *range(62, 200)]
    assert found.summary()[0] == ("theirs.h5: 50 of its 200 images (25.0%) are among the "
                                  "600 training and validation images of ours.h5")
    assert json.loads(json.dumps(found.to_dict()))["seen"] == 50


def test_overlap_without_positions_counts_pixels_only(two_files, sample, tmp_path):
    ours, theirs = two_files
    plain = open_galaxy10(write_file(tmp_path / "plain.h5", read_images(theirs, np.arange(theirs.n)), theirs.labels))
    found = overlap(ours, np.arange(600), plain)
    assert found.by_position is None and found.by_pixels.tolist() == list(range(40))
    assert found.seen.tolist() == list(range(40)) and found.seen.dtype == np.int64
    assert found.unseen.tolist() == [*range(40, 60), *range(62, 200)]
    assert "not checked" in found.summary()[2]
