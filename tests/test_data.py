"""Specification of galaxy_class.data: sources, checks, labels, split, streaming pipeline, dihedral transforms."""

import hashlib

import h5py
import numpy as np
import pytest

from conftest import collect
from galaxy_class import GalaxyClassError
from galaxy_class.batches import dihedral, make_dataset
from galaxy_class.data import (
    describe,
    load_split,
    open_galaxy10,
    read_images,
    save_split,
    split_indices,
)
from galaxy_class.download import DATASETS

SAMPLE_COUNTS = [1066, 198, 232, 40]
GZ1_NAMES = ("Elliptical", "Spiral", "Edge-on", "Merger")


def write_h5(path, images, ans, chunked=False, **attrs):
    """A small file in the Galaxy10 schema (or deliberately not, when the caller says so)."""
    with h5py.File(path, "w") as f:
        if images is not None:
            options = dict(chunks=(1, *images.shape[1:]), compression="gzip") if chunked else {}
            f.create_dataset("images", data=images, **options)
        if ans is not None:
            f.create_dataset("ans", data=ans)
        f.attrs.update(attrs)
    return path


def random_images(n, height=8, width=8, channels=3, dtype=np.uint8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, channels)).astype(dtype)


def fingerprint(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


# --- sources and the files themselves ---------------------------------------------------------


def test_sample_is_a_stratified_subset_with_all_four_classes(sample_file):
    g = open_galaxy10("sample")
    assert g.path == sample_file
    assert (g.n, g.image_shape, g.class_names) == (1536, (69, 69, 3), GZ1_NAMES)
    assert g.class_counts().tolist() == SAMPLE_COUNTS
    assert g.labels.dtype == np.int32 and g.labels.shape == (1536,)
    with h5py.File(sample_file, "r") as f:
        assert "subset" in f.attrs["source"]
        assert f["images"].chunks == (1, 69, 69, 3) and f["images"].compression == "gzip"
        assert len(np.unique(f["objid"][:])) == 1536
    assert sample_file.stat().st_size < 20e6


def test_dev_file_class_counts(dev_file):
    g = open_galaxy10(str(dev_file))
    assert g.class_counts().tolist() == [3239, 593, 696, 80]
    assert g.class_names == GZ1_NAMES


def test_sample_images_and_labels_are_the_dev_files(dev_file, sample_file):
    with h5py.File(dev_file, "r") as dev, h5py.File(sample_file, "r") as sample:
        row = {objid: i for i, objid in enumerate(dev["objid"][:])}
        rows = np.array([row[objid] for objid in sample["objid"][:]])
        assert np.all(np.diff(rows) > 0)  # a subset in the dev file's order
        assert np.array_equal(sample["ans"][:], dev["ans"][:][rows])
        assert np.array_equal(sample["images"][:], dev["images"][:][rows])


def test_opening_and_streaming_leave_the_file_unchanged(sample_file):
    before = fingerprint(sample_file)
    g = open_galaxy10(sample_file)
    collect(make_dataset(g, np.arange(100), 32, shuffle=True, augment=True))
    read_images(g, [5, 1])
    assert fingerprint(sample_file) == before


def test_describe_lists_path_shape_and_class_counts(sample_file):
    text = describe(open_galaxy10("sample"))
    assert str(sample_file) in text
    assert "1536 of 69x69x3 uint8" in text
    for name, count in zip(GZ1_NAMES, SAMPLE_COUNTS):
        assert any(name in line and str(count) in line for line in text.splitlines())


def test_class_names_come_from_the_file_then_galaxy10_then_numbers(tmp_path):
    ten_classes = np.arange(10) % 10
    as_bytes = open_galaxy10(write_h5(tmp_path / "b.h5", random_images(10), ten_classes, class_names=[b"x"] * 10))
    assert as_bytes.class_names == ("x",) * 10
    sdss_shaped = open_galaxy10(write_h5(tmp_path / "s.h5", random_images(10, 69, 69), ten_classes))
    assert sdss_shaped.class_names == DATASETS["galaxy10_sdss"].class_names
    assert sdss_shaped.class_names[3] == "Smooth, Cigar shaped"
    decals_shaped = open_galaxy10(write_h5(tmp_path / "d.h5", random_images(10, 256, 256), ten_classes))
    assert decals_shaped.class_names[3] == "In-between Round Smooth"
    other = open_galaxy10(write_h5(tmp_path / "o.h5", random_images(4), np.array([0, 2, 2, 1])))
    assert other.class_names == ("class 0", "class 1", "class 2")
    assert other.class_counts().tolist() == [1, 1, 2]


def test_unknown_label_far_above_the_others_is_refused_naming_it(tmp_path):
    labels = np.array([0, 1, 2, 3, 255, 1, 255], np.uint8)  # 255 as "unknown"
    path = write_h5(tmp_path / "f.h5", random_images(7), labels)
    with pytest.raises(GalaxyClassError) as error:
        open_galaxy10(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert "256 classes, 251 of them empty (no image has label 4-254)" in message
    assert "label 255 (on 2 images) looks out of place" in message
    assert "drop those rows, or add a class_names attribute" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "labels, gap, suspect",
    [
        ([0, 2, 2, 3], "no image has label 1)", "labels 2-3 (on 3 images) look"),
        ([0, 1, 5, 9, 9], "no image has label 2-4, 6-8)", "labels 5, 9 (on 3 images) look"),
        ([0, 10**12], "no image has label 1-999999999999)", "label 1000000000000 (on 1 images) looks"),
    ],
    ids=["one empty class", "two gaps", "huge label"],
)
def test_any_gap_in_the_labels_is_refused(labels, gap, suspect, tmp_path):
    path = write_h5(tmp_path / "f.h5", random_images(len(labels)), np.array(labels, np.int64))
    with pytest.raises(GalaxyClassError, match=f"^{path}: ") as error:
        open_galaxy10(path)
    assert gap in str(error.value) and suspect in str(error.value)


def test_labels_counted_from_one_are_refused_with_their_fix(tmp_path):
    path = write_h5(tmp_path / "f.h5", random_images(4), np.array([1, 2, 3, 1]))
    with pytest.raises(GalaxyClassError, match="labels start at 1, which would make 4 classes, 1 of them empty "
                                               r"\(no image has label 0\); subtract 1 from them"):
        open_galaxy10(path)


def test_a_galaxy10_subset_may_lack_a_class(tmp_path):
    labels = np.array([0, 1, 2, 4, 5, 6, 7, 8, 9, 9])  # no "Smooth, Cigar shaped" (3)
    g = open_galaxy10(write_h5(tmp_path / "s.h5", random_images(10, 69, 69), labels))
    assert g.class_names == DATASETS["galaxy10_sdss"].class_names
    assert g.class_counts().tolist() == [1, 1, 1, 0, 1, 1, 1, 1, 1, 2]
    assert "empty:   1 of the classes have no images: 3 (Smooth, Cigar shaped)" in describe(g).splitlines()


def test_empty_classes_named_by_the_file_are_allowed_and_described(tmp_path):
    names = ["Elliptical", "Spiral", "Edge-on", "Merger", "Unknown"]
    path = write_h5(tmp_path / "f.h5", random_images(4), np.array([0, 1, 1, 4]), class_names=names)
    g = open_galaxy10(path)
    assert g.class_names == tuple(names) and g.class_counts().tolist() == [1, 2, 0, 0, 1]
    lines = describe(g).splitlines()
    assert "empty:   2 of the classes have no images: 2 (Edge-on), 3 (Merger)" in lines
    assert "empty" not in describe(open_galaxy10("sample"))


def truncated(tmp_path, sample_file):
    path = tmp_path / "truncated.h5"
    path.write_bytes(sample_file.read_bytes()[: sample_file.stat().st_size // 2])
    return path


def corrupt_last_image(tmp_path, sample_file):
    path = write_h5(tmp_path / "corrupt.h5", random_images(5), np.zeros(5, np.uint8), chunked=True)
    with h5py.File(path, "r") as f:
        chunk = f["images"].id.get_chunk_info(4)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset)
        f.write(b"\xff" * chunk.size)
    return path


def directory(tmp_path, sample_file):
    (tmp_path / "folder.h5").mkdir()
    return tmp_path / "folder.h5"


def empty(tmp_path, sample_file):
    (tmp_path / "empty.h5").touch()
    return tmp_path / "empty.h5"


def text_file(tmp_path, sample_file):
    (tmp_path / "notes.h5").write_text("not HDF5 at all\n")
    return tmp_path / "notes.h5"


MALFORMED = {
    "missing": (lambda tmp_path, _: tmp_path / "absent.h5", "no such file"),
    "directory": (directory, "is a directory"),
    "empty": (empty, r"is empty \(0 bytes\)"),
    "not hdf5": (text_file, "is not an HDF5 file"),
    "truncated": (truncated, "cannot be opened as HDF5, truncated or corrupt"),
    "corrupt image": (corrupt_last_image, "cannot read its data, truncated or corrupt"),
    "no images": (lambda p, _: write_h5(p / "f.h5", None, np.zeros(3, int)), "has no 'images' dataset"),
    "no labels": (lambda p, _: write_h5(p / "f.h5", random_images(3), None), "has no 'ans' dataset"),
    "rank 3": (lambda p, _: write_h5(p / "f.h5", random_images(3)[..., 0], np.zeros(3, int)), r"shape \(3, 8, 8\)"),
    "4 channels": (lambda p, _: write_h5(p / "f.h5", random_images(3, channels=4), np.zeros(3, int)), r"8, 8, 4\)"),
    "float images": (
        lambda p, _: write_h5(p / "f.h5", random_images(3, dtype=np.float32), np.zeros(3, int)),
        "'images' is float32, expected uint8",
    ),
    "float labels": (lambda p, _: write_h5(p / "f.h5", random_images(3), np.zeros(3)), "expected integer labels"),
    "length mismatch": (
        lambda p, _: write_h5(p / "f.h5", random_images(3), np.zeros(2, int)),
        "has 3 images but 'ans' has 2 labels",
    ),
    "negative labels": (lambda p, _: write_h5(p / "f.h5", random_images(3), np.array([0, -1, 1])), "negative"),
    "label beyond names": (
        lambda p, _: write_h5(p / "f.h5", random_images(3), np.array([0, 1, 2]), class_names=["a", "b"]),
        "label 2 but class_names names only 2 classes",
    ),
    "zero images": (lambda p, _: write_h5(p / "f.h5", random_images(0), np.zeros(0, int)), "has no images"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_each_malformed_file_gets_its_own_error_naming_the_file(case, tmp_path, sample_file):
    make, message = MALFORMED[case]
    path = make(tmp_path, sample_file)
    before = fingerprint(path) if path.is_file() else None
    with pytest.raises(GalaxyClassError, match=message) as error:
        open_galaxy10(path)
    assert str(error.value).startswith(f"{path}: ")
    assert "\n" not in str(error.value)
    assert (fingerprint(path) if path.is_file() else None) == before


def test_unknown_source_name_lists_the_valid_ones():
    valid = "sample, galaxy10_decals, galaxy10_sdss"
    with pytest.raises(GalaxyClassError, match=f"galaxy10_decal: not a data set name .*{valid}"):
        open_galaxy10("galaxy10_decal")


# --- split --------------------------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_covers_all(dev_file):
    labels = open_galaxy10(dev_file).labels
    split = split_indices(labels, seed=0)
    train, val, test = split["train"], split["val"], split["test"]
    assert [len(train), len(val), len(test)] == [3686, 461, 461]
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(len(labels)))
    overall = np.bincount(labels) / len(labels)
    for part in split.values():
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
        assert np.allclose(np.bincount(labels[part], minlength=4) / len(part), overall, atol=0.005)
    assert np.bincount(labels[test])[3] == 8  # the 80 Mergers go 64 / 8 / 8


def test_split_is_seed_stable_and_seed_dependent(sample_file):
    labels = open_galaxy10(sample_file).labels
    first, again, other = split_indices(labels, 0), split_indices(labels, 0), split_indices(labels, 1)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["test"], other["test"])


@pytest.mark.parametrize(
    "labels",
    [[0] * 40 + [1] * 2, [0] * 50 + [1], [0, 1, 2, 3] * 3, list(range(10)) * 2 + [0] * 30],
    ids=["class of 2", "class of 1", "fewer test images than classes", "ten classes of 2"],
)
def test_split_of_tiny_classes_does_not_crash(labels):
    split = split_indices(labels, seed=3)
    assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(len(labels)))
    assert all(len(part) > 0 for part in split.values())


def test_split_fractions_must_make_sense_and_leave_no_part_empty():
    with pytest.raises(GalaxyClassError, match="fractions"):
        split_indices([0, 1] * 10, fractions=(0.8, 0.3, 0.1))
    with pytest.raises(GalaxyClassError, match="cannot split 4 images into train/val/test"):
        split_indices([0, 1, 0, 1])


def test_split_saves_and_loads(tmp_path):
    split = split_indices([0, 1, 2] * 20, seed=0)
    save_split(split, tmp_path / "split")
    loaded = load_split(tmp_path / "split")
    assert loaded.keys() == split.keys() and all(np.array_equal(loaded[k], split[k]) for k in split)
    with pytest.raises(GalaxyClassError, match="not a split file"):
        load_split(tmp_path / "absent.npz")


# --- reading and the streaming pipeline ------------------------------------------------------------


def test_read_images_keeps_the_order_asked_for(sample_file):
    g = open_galaxy10(sample_file)
    with h5py.File(sample_file, "r") as f:
        expected = np.stack([f["images"][i] for i in (9, 2, 9, 0)])
    assert np.array_equal(read_images(g, [9, 2, 9, 0]), expected)
    with pytest.raises(GalaxyClassError, match="index 1536 is out of range for its 1536 images"):
        read_images(g, [0, 1536])


def test_unshuffled_pass_matches_the_file(sample_file):
    g = open_galaxy10(sample_file)
    indices = np.arange(3, 203)
    batches = list(make_dataset(g, indices, 64))
    assert [tuple(x.shape) for x, _ in batches] == [(64, 69, 69, 3)] * 3 + [(8, 69, 69, 3)]
    assert all(x.dtype.name == "uint8" and y.dtype.name == "int32" for x, y in batches)
    images, labels = collect(make_dataset(g, indices, 64))
    with h5py.File(sample_file, "r") as f:
        assert np.array_equal(images, f["images"][3:203])
    assert np.array_equal(labels, g.labels[indices])


def test_drop_remainder_gives_full_batches_of_static_size(sample_file):
    dataset = make_dataset(open_galaxy10(sample_file), np.arange(100), 32, drop_remainder=True)
    assert dataset.element_spec[0].shape.as_list() == [32, 69, 69, 3]
    assert [len(y) for _, y in dataset] == [32, 32, 32]
    assert dataset.cardinality() == 3
    assert make_dataset(open_galaxy10(sample_file), np.arange(100), 32).cardinality() == 4


def test_shuffled_epochs_cover_each_index_once_differ_and_reproduce(sample_file):
    g = open_galaxy10(sample_file)
    with h5py.File(sample_file, "r") as f:
        index_of = {image.tobytes(): i for i, image in enumerate(f["images"][:300])}
    assert len(index_of) == 300  # every image is different, so an image tells its index
    indices = np.arange(300)

    def epochs(dataset):
        orders = []
        for _ in range(2):
            images, labels = collect(dataset)
            order = np.array([index_of[image.tobytes()] for image in images])
            assert np.array_equal(labels, g.labels[order])  # labels travel with their images
            orders.append(order)
        return orders

    first, second = epochs(make_dataset(g, indices, 64, shuffle=True, seed=7))
    assert np.array_equal(np.sort(first), indices) and np.array_equal(np.sort(second), indices)
    assert not np.array_equal(first, second)
    again = epochs(make_dataset(g, indices, 64, shuffle=True, seed=7))
    assert np.array_equal(again[0], first) and np.array_equal(again[1], second)
    assert not np.array_equal(epochs(make_dataset(g, indices, 64, shuffle=True, seed=8))[0], first)
    resumed = epochs(make_dataset(g, indices, 64, shuffle=True, seed=7, first_epoch=1))
    assert np.array_equal(resumed[0], second)


def test_augmentation_applies_a_seeded_dihedral_transform_per_image(sample_file):
    g = open_galaxy10(sample_file)
    indices = np.arange(64)
    originals = read_images(g, indices)
    images, labels = collect(make_dataset(g, indices, 32, augment=True, seed=5))
    assert np.array_equal(labels, g.labels[indices])
    used = [
        next(k for k in range(8) if np.array_equal(image, dihedral(original[None], k)[0]))
        for image, original in zip(images, originals)
    ]
    assert len(set(used)) == 8
    assert np.array_equal(collect(make_dataset(g, indices, 32, augment=True, seed=5))[0], images)
    assert not np.array_equal(collect(make_dataset(g, indices, 32, augment=True, seed=6))[0], images)


def test_augmentation_needs_square_images(tmp_path):
    g = open_galaxy10(write_h5(tmp_path / "wide.h5", random_images(4, 8, 12), np.zeros(4, int)))
    assert collect(make_dataset(g, np.arange(4), 2))[0].shape == (4, 8, 12, 3)
    with pytest.raises(GalaxyClassError, match="8x12; rotations need square images"):
        make_dataset(g, np.arange(4), 2, augment=True)


def test_dihedral_gives_the_8_distinct_rotations_and_flips(sample_file):
    import tensorflow as tf

    image = read_images(open_galaxy10(sample_file), [0])
    x = image[0]
    expected = [np.rot90(x, k) for k in range(4)] + [np.fliplr(np.rot90(x, k)) for k in range(4)]
    for k in range(8):
        out = dihedral(image, k)
        assert np.array_equal(out[0], expected[k])
        assert np.array_equal(np.sort(out, axis=None), np.sort(image, axis=None))
        assert np.array_equal(dihedral(tf.constant(image), k).numpy(), out)
    assert np.array_equal(dihedral(image, 0), image)
    assert len({dihedral(image, k).tobytes() for k in range(8)}) == 8


def test_examples_per_class_picks_each_class_seeded():
    from galaxy_class.data import examples_per_class

    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    picks = examples_per_class(labels, per_class=4, seed=1)
    assert list(labels[picks]) == [0] * 4 + [1] * 3 + [2] * 4
    assert len(set(picks)) == len(picks)
    assert list(picks) == list(examples_per_class(labels, per_class=4, seed=1))
    assert list(picks) != list(examples_per_class(labels, per_class=4, seed=2))
