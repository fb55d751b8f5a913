"""Galaxy10 data: resolving a source to a file, checking it, the split, and reading images.

Batches for training (a tf.data pipeline) are made in galaxy_class.batches.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
from h5py._objects import phil as H5PY_LOCK
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, StratifiedKFold, train_test_split

from galaxy_class.download import DATASETS, download
from galaxy_class.errors import GalaxyClassError, first_line

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PATH = REPO_ROOT / "data" / "gz1_sdss_sample.h5"
SPLITS = ("train", "val", "test")
SOURCE_NAMES = ("sample", *DATASETS)
# A grouped split carves a fraction as m of n StratifiedGroupKFold folds, n at most this: 0.1 as 1 of 10, 0.15 as 3
# of 20.
MAX_FOLDS = 20

# Bounds on what a file declares, checked before anything is read: a header of a few bytes can declare terabytes,
# and HDF5 allocates what is declared. Galaxy10 images are 69 (SDSS) or 256 (DECaLS) px a side, the raw survey
# cutouts they are cut from 423 to 512: 4096 takes those and any cutout a user makes, one image staying under 48 MiB.
MAX_IMAGE_SIDE = 4096
# Galaxy10 DECaLS holds 17,736 images; no survey has labels for anywhere near 10**8 galaxies.
MAX_IMAGES = 10**8
# HDF5 inflates a whole chunk to read any byte of it; Galaxy10 stores one image a chunk (196 KB for DECaLS).
MAX_CHUNK_BYTES = 64 * 2**20
# HDF5 spends ~20 us on each chunk a read crosses, written or not: 10**6 chunks of one label took 18 s.
MAX_CHUNKS_PER_READ = 10**5
# The filters read, in the order h5py writes them. Only deflate makes a chunk bigger when undone, and its chunks are
# checked before HDF5 inflates them (HDF5 itself inflates a chunk of a few KB to gigabytes); lzf, szip and plugin
# filters cannot be checked so.
FILTERS = {h5py.h5z.FILTER_SHUFFLE: "shuffle", h5py.h5z.FILTER_DEFLATE: "gzip",
           h5py.h5z.FILTER_FLETCHER32: "fletcher32"}
OTHER_FILTERS = {h5py.h5z.FILTER_SZIP: "szip", h5py.h5z.FILTER_NBIT: "nbit", h5py.h5z.FILTER_SCALEOFFSET: "scaleoffset",
                 h5py.h5z.FILTER_LZF: "lzf"}


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
        try:
            _check_links_and_storage(path, f)  # first: opening 'images' by name could follow a link elsewhere
        except OSError as err:
            raise GalaxyClassError(f"{path}: cannot read its structure, truncated or corrupt? ({err})") from err
        for key in ("images", "ans"):
            if not isinstance(f.get(key), h5py.Dataset):
                raise GalaxyClassError(f"{path}: has no '{key}' dataset (found: {', '.join(f) or 'nothing'})")
        images, ans = f["images"], f["ans"]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise GalaxyClassError(f"{path}: 'images' has shape {images.shape}, expected (N, height, width, 3)")
        if images.dtype != np.uint8:
            raise GalaxyClassError(f"{path}: 'images' is {images.dtype}, expected uint8 pixels")
        if max(images.shape[1:3]) > MAX_IMAGE_SIDE:
            raise GalaxyClassError(
                f"{path}: 'images' declares images of {images.shape[1]}x{images.shape[2]} px; at most "
                f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} are read (Galaxy10's are 69x69 or 256x256)"
            )
        if len(images) > MAX_IMAGES:
            raise GalaxyClassError(f"{path}: 'images' declares {len(images)} images; at most {MAX_IMAGES} are read")
        if ans.ndim != 1 or not np.issubdtype(ans.dtype, np.integer):
            raise GalaxyClassError(f"{path}: 'ans' is {ans.dtype} of shape {ans.shape}, expected integer labels (N,)")
        if len(images) != len(ans):
            raise GalaxyClassError(f"{path}: 'images' has {len(images)} images but 'ans' has {len(ans)} labels")
        if len(images) == 0:
            raise GalaxyClassError(f"{path}: has no images")
        _check_labels_fit(path, ans)
        # The per-galaxy columns a catalogue copies (objid, ra, dec, ...) are read whole too, so checked like 'ans'.
        columns = {key: item for key, item in f.items() if key != "images"
                   and isinstance(item, h5py.Dataset) and item.shape == (len(ans),)}
        _check_layout(path, "images", images, rows=1)
        for key, column in columns.items():
            _check_layout(path, key, column, rows=len(column))
        try:
            for key, column in columns.items():
                _check_chunks(column, _stored_chunks(column), f"'{key}'" if key == "ans" else f"column {key!r}")
            labels = ans[()]
            # A damaged chunk only shows when it is read; the two ends catch most truncations.
            for i in (0, len(images) - 1):
                _check_chunks(images, _image_chunks(images, i), f"image {i}")
                _ = images[i]
        except (OSError, BadChunk) as err:
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


def _check_links_and_storage(path: Path, f: h5py.File) -> None:
    """Refuse any link or dataset of the file that takes data from elsewhere: from another file (a local file
    of the attacker's choosing, e.g. ~/.ssh/id_rsa copied into a catalogue) or from another name."""
    root = f["/"]
    groups, seen = [("", root)], {root.id}
    while groups:  # a walk of our own: h5py's visit* cannot stop on an error, and hard links may form cycles
        prefix, group = groups.pop()
        for key in group:
            name = repr(prefix + key)
            try:
                link = group.get(key, getlink=True)  # what the link is, without following it
            except TypeError:  # h5py's word for a link of a user-defined kind
                raise GalaxyClassError(f"{path}: {name} is a link of a user-defined kind; refused") from None
            if isinstance(link, h5py.ExternalLink):
                raise GalaxyClassError(f"{path}: {name} is a link into another file (external link); refused")
            if isinstance(link, h5py.SoftLink):
                raise GalaxyClassError(f"{path}: {name} is a link to another name in the file (soft link); refused")
            item = group[key]
            if isinstance(item, h5py.Group) and item.id not in seen:
                seen.add(item.id)
                groups.append((prefix + key + "/", item))
            elif isinstance(item, h5py.Dataset) and item.external:
                raise GalaxyClassError(f"{path}: dataset {name} stores its data in another file (external storage); "
                                       f"refused")
            elif isinstance(item, h5py.Dataset) and item.is_virtual:
                raise GalaxyClassError(f"{path}: dataset {name} takes its data from other datasets, in this file or "
                                       f"another (virtual dataset); refused")


def _check_labels_fit(path: Path, ans: h5py.Dataset) -> None:
    """Refuse labels that would not fit in memory, read then converted to int32."""
    needed = len(ans) * (ans.dtype.itemsize + 4)
    available = memory_available()
    if available is not None and needed > available:
        raise GalaxyClassError(
            f"{path}: 'ans' declares {len(ans)} labels, {bytes_text(needed)} to read, more than the "
            f"{bytes_text(available)} of memory available"
        )


def _check_layout(path: Path, name: str, dset: h5py.Dataset, rows: int) -> None:
    """Refuse filters whose output cannot be checked, chunks too big to inflate, and reads of `rows` rows that
    would cross too many chunks."""
    filters = _filters(dset)
    if filters != [code for code in FILTERS if code in filters]:
        used = ", ".join(FILTERS.get(code) or OTHER_FILTERS.get(code) or f"filter {code}" for code in filters)
        raise GalaxyClassError(
            f"{path}: dataset {name!r} is stored with the HDF5 filters {used}; only gzip (with shuffle and "
            f"fletcher32, in that order) is read, since only its chunks can be checked before they are inflated"
        )
    if dset.chunks is None:
        return
    chunk_bytes = math.prod(dset.chunks) * dset.id.get_type().get_size()
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise GalaxyClassError(
            f"{path}: dataset {name!r} has chunks of {chunk_bytes / 2**20:.0f} MiB; at most "
            f"{MAX_CHUNK_BYTES // 2**20} MiB are read (HDF5 inflates a whole chunk to read any of it)"
        )
    crossed = math.ceil(rows / dset.chunks[0]) * math.prod(
        math.ceil(size / chunk) for size, chunk in zip(dset.shape[1:], dset.chunks[1:])
    )
    if crossed > MAX_CHUNKS_PER_READ:
        what = "one image" if rows == 1 else "it"
        raise GalaxyClassError(
            f"{path}: dataset {name!r} is cut into chunks of {dset.chunks}: reading {what} crosses {crossed} of them, "
            f"at most {MAX_CHUNKS_PER_READ} are read"
        )


class BadChunk(ValueError):
    """A deflated chunk that is not what its dataset declares: more or less data, or no deflate stream at all."""


def inflate(raw: bytes, size: int, exact: bool = True) -> bytes:
    """A deflate stream inflated to `size` bytes (at most, unless `exact`); BadChunk, after inflating at most
    `size` + 1 bytes, when it holds more, or fewer."""
    stream = zlib.decompressobj()
    try:
        data = stream.decompress(raw, size)
        if not stream.eof and stream.decompress(stream.unconsumed_tail, 1):
            raise BadChunk(f"its chunk inflates to more than the {size} bytes it holds")
    except zlib.error as err:
        raise BadChunk(err) from None
    if not stream.eof:
        raise BadChunk("its chunk's deflate stream is cut short")
    if exact and len(data) != size:
        raise BadChunk(f"its chunk inflates to {len(data)} bytes, not the {size} it holds")
    return data


def _filters(dset: h5py.Dataset) -> list[int]:
    plist = dset.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


def _check_chunks(dset: h5py.Dataset, offsets, what: str | None = None) -> None:
    """BadChunk (naming `what`) if a deflated chunk at `offsets` inflates to other than its declared size, which HDF5
    would inflate whole whatever its size; a chunk never written is skipped: it reads as the fill value."""
    filters = _filters(dset)
    if h5py.h5z.FILTER_DEFLATE not in filters:
        return
    deflate_bit = 1 << filters.index(h5py.h5z.FILTER_DEFLATE)
    checksum_bit = 1 << filters.index(h5py.h5z.FILTER_FLETCHER32) if h5py.h5z.FILTER_FLETCHER32 in filters else 0
    size = math.prod(dset.chunks) * dset.id.get_type().get_size()
    # A variable-length element (a string) is 16 bytes in the file, whatever its size in memory (8 for a string):
    # twice that size bounds the chunk.
    exact = not _has_variable_length(dset.id.get_type())
    for offset in offsets:
        try:
            with H5PY_LOCK:
                mask, raw = dset.id.read_direct_chunk(offset)
        except RuntimeError:
            continue
        if mask & deflate_bit:
            continue
        if checksum_bit and not mask & checksum_bit:
            raw = raw[:-4]  # fletcher32's checksum, appended after deflating
        try:
            inflate(raw, size if exact else 2 * size, exact)
        except BadChunk as err:
            raise BadChunk(f"{what}: {err}" if what else err) from None


def _has_variable_length(tid) -> bool:
    kind = tid.get_class()
    if kind == h5py.h5t.VLEN or (kind == h5py.h5t.STRING and tid.is_variable_str()):
        return True
    if kind == h5py.h5t.COMPOUND:
        return any(_has_variable_length(tid.get_member_type(i)) for i in range(tid.get_nmembers()))
    return kind == h5py.h5t.ARRAY and _has_variable_length(tid.get_super())


def _stored_chunks(dset: h5py.Dataset) -> list[tuple[int, ...]]:
    """Offsets of the chunks written to the file (none for a contiguous dataset)."""
    if dset.chunks is None:
        return []
    offsets = []
    dset.id.chunk_iter(lambda info: offsets.append(info.chunk_offset))
    return offsets


def _image_chunks(images: h5py.Dataset, i: int) -> list[tuple[int, ...]]:
    """Offsets of the chunks holding image i."""
    if images.chunks is None:
        return []
    row = i - i % images.chunks[0]
    grid = [range(0, size, chunk) for size, chunk in zip(images.shape[1:], images.chunks[1:])]
    return [(row, *rest) for rest in itertools.product(*grid)]


def image_reader(path: Path, images: h5py.Dataset):
    """A function i -> images[i] through HDF5 that checks the deflated chunks of each image before HDF5 inflates
    them; GalaxyClassError naming the image where one is corrupt."""
    checked = set()

    def read(i):
        i = int(i)
        try:
            if images.chunks is not None and i // images.chunks[0] not in checked:
                _check_chunks(images, _image_chunks(images, i))
                checked.add(i // images.chunks[0])
            return images[i]
        except (OSError, BadChunk) as err:
            raise GalaxyClassError(f"{path}: image {i} is corrupt ({first_line(err)})") from None

    return read


def bytes_text(n: int) -> str:
    """A number of bytes as "12.9 GB", "81.0 MB" or "7.7 kB"."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def memory_available() -> int | None:
    """Bytes of memory available to new allocations (Linux's MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # other Unixes: free pages, which leaves out reclaimable cache, so errs towards streaming
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


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


def split_indices(labels, seed: int = 0, fractions=(0.8, 0.1, 0.1), groups=None,
                  leave_out=None, fold=None) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test split of range(len(labels)): sorted, disjoint int64 index arrays.

    Images sharing a `groups` id (integrity.check's group_ids: duplicates) land in the same part, and `leave_out`
    indices (blank images) in none. Without a group of two or more, the split is the plain stratified one, in which
    classes too small to stratify (one member in the part being split) are placed at random. With `fold` (k, n),
    the test part is fold k of n stratified folds (cross-validation; its fraction replaces the third of
    `fractions`), and validation is carved from the rest as before.
    """
    if fold is not None:
        return _fold_split(np.asarray(labels), seed, fractions[1], groups, leave_out, *fold)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise GalaxyClassError(f"split fractions {fractions}: need three positive fractions summing to 1")
    labels = np.asarray(labels)
    leave_out = np.asarray([] if leave_out is None else leave_out, np.int64)
    if leave_out.size and (leave_out.min() < 0 or leave_out.max() >= len(labels)):
        raise GalaxyClassError(f"split leave_out: index {leave_out.min() if leave_out.min() < 0 else leave_out.max()} "
                               f"is out of range for {len(labels)} images")
    kept = np.setdiff1d(np.arange(len(labels)), leave_out)
    if groups is not None and len(groups) != len(labels):
        raise GalaxyClassError(f"split groups: {len(groups)} group ids for {len(labels)} images")
    grouped = groups is not None and len(np.unique(np.asarray(groups)[kept])) < len(kept)
    train_fraction, val_fraction, test_fraction = fractions
    try:
        if grouped:
            groups = np.asarray(groups)
            rest, test = _grouped_split(kept, labels, groups, test_fraction, seed)
            train, val = _grouped_split(rest, labels, groups, val_fraction / (train_fraction + val_fraction), seed)
        else:
            train, rest = _stratified_split(kept, labels[kept], 1 - train_fraction, seed)
            val, test = _stratified_split(rest, labels[rest], test_fraction / (val_fraction + test_fraction), seed)
        if not (len(train) and len(val) and len(test)):
            raise ValueError("a part would be empty")
    except ValueError as err:  # a part would be empty
        what = f"{len(kept)} images" + (" in groups of duplicates" if grouped else "")
        raise GalaxyClassError(f"cannot split {what} into train/val/test {fractions} ({err})") from err
    return {name: np.sort(part).astype(np.int64) for name, part in zip(SPLITS, (train, val, test))}


def _fold_split(labels, seed, val_fraction, groups, leave_out, k, n):
    """Fold k of n stratified folds (grouped where `groups` has copies) as the test part; validation, as
    `val_fraction` of all images, carved from the other folds with the same seed."""
    if not (n >= 2 and 0 <= k < n and 0 < val_fraction < 1 - 1 / n):
        raise GalaxyClassError(f"cross-validation fold {k} of {n} with validation fraction {val_fraction}: need n of "
                               f"at least 2, 0 <= k < n, and room for a validation part")
    kept = np.setdiff1d(np.arange(len(labels)), np.asarray([] if leave_out is None else leave_out, np.int64))
    grouped = groups is not None and len(np.unique(np.asarray(groups)[kept])) < len(kept)
    try:
        with warnings.catch_warnings():  # classes smaller than n: stratified as far as they go
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            if grouped:
                folds = StratifiedGroupKFold(n, shuffle=True, random_state=seed).split(kept, labels[kept],
                                                                                     np.asarray(groups)[kept])
            else:
                folds = StratifiedKFold(n, shuffle=True, random_state=seed).split(kept, labels[kept])
            rest, test = (kept[part] for part in next(itertools.islice(folds, k, None)))
            share = val_fraction / (1 - 1 / n)
            if grouped:
                train, val = _grouped_split(rest, labels, np.asarray(groups), share, seed)
            else:
                train, val = _stratified_split(rest, labels[rest], share, seed)
    except ValueError as err:
        raise GalaxyClassError(f"cannot split {len(kept)} images into {n} cross-validation folds ({err})") from None
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


def _grouped_split(indices: np.ndarray, labels: np.ndarray, groups: np.ndarray, test_size: float, seed: int):
    """(rest, test) of `indices`, test about `test_size` of them, stratified by label, no group in both."""
    n_groups = len(np.unique(groups[indices]))
    fraction = Fraction(test_size).limit_denominator(max(2, min(MAX_FOLDS, n_groups)))
    if fraction.numerator == 0:  # a part smaller than the finest fold: one fold, not none (nor half the data)
        fraction = Fraction(1, max(2, min(MAX_FOLDS, n_groups)))
    n_folds = max(2, fraction.denominator)
    taken = min(max(fraction.numerator, 1), n_folds - 1)
    folds = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    try:
        with warnings.catch_warnings():  # classes smaller than n_folds: stratified as far as they go
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            parts = folds.split(indices, labels[indices], groups[indices])
            test = np.concatenate([fold for _, fold in itertools.islice(parts, taken)])
    except ValueError:
        # Tiny data sets (every class smaller than n_folds) cannot be stratified at all.
        parts = GroupShuffleSplit(1, test_size=test_size, random_state=seed).split(indices, groups=groups[indices])
        _, test = next(parts)
    return np.delete(indices, test), indices[test]


def save_split(split: dict[str, np.ndarray], path, left_out=None, group_ids=None) -> None:
    """Write a split to an .npz file at exactly `path`; with a grouped split, also what shaped it: the indices left
    out of every part (blank images) and each image's group id (integrity.check)."""
    record = {"left_out": left_out, "group_ids": group_ids}
    with open(path, "wb") as f:
        np.savez(f, **{name: split[name] for name in SPLITS},
                 **{name: np.asarray(value, np.int64) for name, value in record.items() if value is not None})


def load_split(path) -> dict[str, np.ndarray]:
    """Read a split written by save_split."""
    try:
        with np.load(path) as z:
            return {name: z[name].astype(np.int64) for name in SPLITS}
    except (OSError, ValueError, KeyError) as err:
        raise GalaxyClassError(f"{path}: not a split file with train/val/test arrays ({err})") from err


def load_split_record(path) -> dict[str, np.ndarray]:
    """What save_split recorded beside the split: 'left_out' and 'group_ids' where given, else nothing."""
    try:
        with np.load(path) as z:
            return {name: z[name].astype(np.int64) for name in ("left_out", "group_ids") if name in z}
    except (OSError, ValueError) as err:
        raise GalaxyClassError(f"{path}: not a split file ({err})") from err


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
    """images[indices], read one image at a time in file order, each image's chunks checked (image_reader)."""
    # h5py's fancy indexing (which also needs sorted indices) measured ~10x slower than this loop.
    read = image_reader(Path(images.file.filename), images)
    out = np.empty((len(indices), *images.shape[1:]), np.uint8)
    for position in np.argsort(indices, kind="stable"):
        out[position] = read(indices[position])
    return out
