"""Galaxy10 data: resolving a source to a file, checking it, the split, and reading images.

Batches for training (a tf.data pipeline) are made in galaxy_class.batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from sklearn.model_selection import train_test_split

from galaxy_class.download import DATASETS, download
from galaxy_class.errors import GalaxyClassError

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PATH = REPO_ROOT / "data" / "gz1_sdss_sample.h5"
SPLITS = ("train", "val", "test")
SOURCE_NAMES = ("sample", *DATASETS)


# eq=False: comparing the labels arrays field by field would raise, so files compare by identity.
@dataclass(frozen=True, eq=False)
class Galaxy10File:
    """A checked file in the Galaxy10 schema: `images` uint8 (N, H, W, 3) and `ans` labels (N,)."""

    path: Path
    source: str
    n: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    labels: np.ndarray

    def class_counts(self) -> np.ndarray:
        """Number of images in each class, (K,)."""
        return np.bincount(self.labels, minlength=len(self.class_names))


def resolve_source(source: str, cache_dir: Path | None = None) -> Path:
    """Path of a source: "sample", a DATASETS name (downloaded if needed), or a file path."""
    if source == "sample":
        return SAMPLE_PATH
    if source in DATASETS:
        return download(source, cache_dir)
    path = Path(source).expanduser()
    if not path.exists() and len(path.parts) == 1 and not path.suffix:
        raise GalaxyClassError(f"{source}: not a data set name ({', '.join(SOURCE_NAMES)}) nor an existing file")
    return path


def open_galaxy10(source: str | Path, cache_dir: Path | None = None) -> Galaxy10File:
    """Resolve `source` and check the file (read-only); raise GalaxyClassError naming what is wrong."""
    path = Path(source) if isinstance(source, Path) else resolve_source(source, cache_dir)
    if not path.exists():
        raise GalaxyClassError(f"{path}: no such file")
    if path.is_dir():
        raise GalaxyClassError(f"{path}: is a directory, not an HDF5 file")
    if not os.access(path, os.R_OK):
        raise GalaxyClassError(f"{path}: is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise GalaxyClassError(f"{path}: is empty (0 bytes)")
    if not h5py.is_hdf5(path):
        raise GalaxyClassError(f"{path}: is not an HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise GalaxyClassError(f"{path}: cannot be opened as HDF5, truncated or corrupt? ({err})") from err
    with f:
        for key in ("images", "ans"):
            if not isinstance(f.get(key), h5py.Dataset):
                raise GalaxyClassError(f"{path}: has no '{key}' dataset (found: {', '.join(f) or 'nothing'})")
        images, ans = f["images"], f["ans"]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise GalaxyClassError(f"{path}: 'images' has shape {images.shape}, expected (N, height, width, 3)")
        if images.dtype != np.uint8:
            raise GalaxyClassError(f"{path}: 'images' is {images.dtype}, expected uint8 pixels")
        if ans.ndim != 1 or not np.issubdtype(ans.dtype, np.integer):
            raise GalaxyClassError(f"{path}: 'ans' is {ans.dtype} of shape {ans.shape}, expected integer labels (N,)")
        if len(images) != len(ans):
            raise GalaxyClassError(f"{path}: 'images' has {len(images)} images but 'ans' has {len(ans)} labels")
        if len(images) == 0:
            raise GalaxyClassError(f"{path}: has no images")
        try:
            labels = ans[()]
            # A damaged chunk only shows when it is read; the two ends catch most truncations.
            _ = images[0], images[-1]
        except OSError as err:
            raise GalaxyClassError(f"{path}: cannot read its data, truncated or corrupt? ({err})") from err
        names = f.attrs.get("class_names")
    if labels.min() < 0:
        raise GalaxyClassError(f"{path}: 'ans' has negative labels (smallest {labels.min()})")
    image_shape = tuple(int(s) for s in images.shape[1:])
    class_names = _class_names(path, names, image_shape, labels)
    if labels.max() >= len(class_names):
        raise GalaxyClassError(
            f"{path}: 'ans' has label {labels.max()} but class_names names only {len(class_names)} classes"
        )
    labels = labels.astype(np.int32)
    labels.setflags(write=False)
    return Galaxy10File(path, str(source), len(labels), image_shape, class_names, labels)


def _class_names(path: Path, attribute, image_shape: tuple[int, ...], labels: np.ndarray) -> tuple[str, ...]:
    """The file's class_names attribute, else the Galaxy10 names for a file shaped like one, else "class i"."""
    if attribute is not None:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(attribute))
    n_classes = int(labels.max()) + 1
    for spec in DATASETS.values():
        if image_shape == (spec.image_size, spec.image_size, 3) and n_classes == len(spec.class_names):
            return spec.class_names  # empty classes allowed: a subset of Galaxy10 may lack a rare class
    _check_no_empty_classes(path, labels)
    return tuple(f"class {i}" for i in range(n_classes))


def _check_no_empty_classes(path: Path, labels: np.ndarray) -> None:
    """Refuse labels that leave gaps in 0..max, e.g. 255 as "unknown" beside 0..3 (251 empty classes)."""
    used = np.unique(labels)  # not bincount: a label of 10**12 would allocate terabytes
    n_classes = int(used[-1]) + 1
    if len(used) == n_classes:
        return
    bounds = [-1, *used.tolist()]
    gaps = [(a + 1, b - 1) for a, b in zip(bounds[:-1], bounds[1:]) if b - a > 1]
    empty = f"{n_classes} classes, {n_classes - len(used)} of them empty (no image has label {_ranges(gaps)})"
    if len(gaps) == 1 and gaps[0][0] == 0:
        raise GalaxyClassError(
            f"{path}: 'ans' labels start at {used[0]}, which would make {empty}; "
            f"subtract {used[0]} from them, or add a class_names attribute to the file if the empty classes are meant"
        )
    first_gap = gaps[0][0]
    suspect = used[used > first_gap].tolist()
    label, looks = ("label", "looks") if len(suspect) == 1 else ("labels", "look")
    raise GalaxyClassError(
        f"{path}: 'ans' labels would make {empty}; {label} {_ranges(_runs(suspect))} "
        f"(on {int((labels > first_gap).sum())} images) {looks} out of place (a placeholder such as 'unknown'?): "
        f"drop those rows, or add a class_names attribute to the file if the empty classes are meant"
    )


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct integers as (first, last) runs of consecutive values."""
    runs = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


def _ranges(runs: list[tuple[int, int]], most: int = 5) -> str:
    """Runs as "0-3, 7, 9-12", the first `most` of them."""
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:most])
    return text + (f" and {len(runs) - most} more ranges" if len(runs) > most else "")


def describe(g: Galaxy10File) -> str:
    """A few lines about a file for `inspect`: path, images, shape, empty classes, and each class with its count."""
    counts = g.class_counts()
    width = max(len(name) for name in g.class_names)
    lines = [
        f"path:    {g.path}",
        f"source:  {g.source}",
        f"images:  {g.n} of {'x'.join(map(str, g.image_shape))} uint8 ({g.path.stat().st_size / 1e6:.1f} MB on disk)",
        f"classes: {len(g.class_names)}",
    ]
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        shown = ", ".join(f"{i} ({g.class_names[i]})" for i in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        lines.append(f"empty:   {len(empty)} of the classes have no images: {shown}{more}")
    lines += [
        f"  {i:>2}  {name:<{width}}  {count:>6}  {count / g.n:6.1%}"
        for i, (name, count) in enumerate(zip(g.class_names, counts))
    ]
    return "\n".join(lines)


def split_indices(labels, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test split of range(len(labels)): sorted, disjoint int64 index arrays.

    Classes too small to stratify (one member in the part being split) are placed at random.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise GalaxyClassError(f"split fractions {fractions}: need three positive fractions summing to 1")
    labels = np.asarray(labels)
    train_fraction, val_fraction, test_fraction = fractions
    try:
        train, rest = _stratified_split(np.arange(len(labels)), labels, 1 - train_fraction, seed)
        val, test = _stratified_split(rest, labels[rest], test_fraction / (val_fraction + test_fraction), seed)
    except ValueError as err:  # a part would be empty
        raise GalaxyClassError(f"cannot split {len(labels)} images into train/val/test {fractions} ({err})") from err
    return {name: np.sort(part).astype(np.int64) for name, part in zip(SPLITS, (train, val, test))}


def _stratified_split(indices: np.ndarray, labels: np.ndarray, test_size: float, seed: int):
    """train_test_split stratified by label where sklearn allows it."""
    # sklearn needs every stratum to have 2 members: a class with one member here joins the
    # largest class, i.e. it lands in either part at random.
    counts = np.bincount(labels)
    strata = np.where(counts[labels] >= 2, labels, counts.argmax())
    try:
        return train_test_split(indices, test_size=test_size, random_state=seed, stratify=strata)
    except ValueError:
        # Tiny data sets (fewer images in a part than classes) cannot be stratified at all.
        return train_test_split(indices, test_size=test_size, random_state=seed)


def save_split(split: dict[str, np.ndarray], path) -> None:
    """Write a split to an .npz file at exactly `path`."""
    with open(path, "wb") as f:
        np.savez(f, **{name: split[name] for name in SPLITS})


def load_split(path) -> dict[str, np.ndarray]:
    """Read a split written by save_split."""
    try:
        with np.load(path) as z:
            return {name: z[name].astype(np.int64) for name in SPLITS}
    except (OSError, ValueError, KeyError) as err:
        raise GalaxyClassError(f"{path}: not a split file with train/val/test arrays ({err})") from err


def read_images(g: Galaxy10File, indices) -> np.ndarray:
    """Images at `indices` as uint8 (k, H, W, 3), in the order given (for a few images: plots, evaluation)."""
    indices = _checked_indices(g, indices)
    with h5py.File(g.path, "r") as f:
        return _read(f["images"], indices)


def examples_per_class(labels, per_class: int, seed: int = 0) -> np.ndarray:
    """Positions of up to `per_class` randomly chosen (seeded) items of each class, class by class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in np.unique(labels)]
    return np.concatenate(picks).astype(np.int64)


def _checked_indices(g: Galaxy10File, indices) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= g.n):
        raise GalaxyClassError(
            f"{g.path}: image index {indices.min() if indices.min() < 0 else indices.max()} is out of range "
            f"for its {g.n} images (a split made for another file?)"
        )
    return indices


def _read(images: h5py.Dataset, indices: np.ndarray) -> np.ndarray:
    """images[indices], read one image at a time in file order."""
    # h5py's fancy indexing (which also needs sorted indices) measured ~10x slower than this loop.
    out = np.empty((len(indices), *images.shape[1:]), np.uint8)
    for position in np.argsort(indices, kind="stable"):
        out[position] = images[indices[position]]
    return out
