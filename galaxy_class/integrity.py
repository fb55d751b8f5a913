"""Data integrity: duplicate images (any flip or rotation), galaxies listed twice (sky positions), blank images,
and how many galaxies of one file another has already seen.

Galaxy10 DECaLS holds pairs of rows at the same sky position and entirely black images; a split that puts one copy
of a galaxy in training and the other in test flatters the test score. `check` finds them, `split_indices`
(data.py) keeps each group in one part and leaves blank images out, `overlap` counts what a run has seen of a file.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import BallTree
from tqdm import tqdm

from galaxy_class.batches import WORKERS, FileImages, _place
from galaxy_class.data import Galaxy10File, _checked_indices
from galaxy_class.errors import GalaxyClassError

DIGEST_BYTES = 16
# Images a worker fingerprints per task: few enough that the progress bar moves, many enough to amortise a task.
CHUNK = 64
ARCSEC = np.pi / (180 * 3600)
# How many examples a summary line shows.
SHOWN = 3


@dataclass(frozen=True, eq=False)
class Fingerprints:
    """Per image: a digest equal for images with the same pixels under any of the 8 flips/rotations, the dihedral
    transform (batches.dihedral's k) that gives the view digested, and whether the image is blank (one colour)."""

    indices: np.ndarray  # (n,) int64: the images of the file fingerprinted
    digests: np.ndarray  # (n,) S16
    views: np.ndarray  # (n,) int8
    blank: np.ndarray  # (n,) bool


def image_fingerprints(g: Galaxy10File, indices=None, progress: bool = False) -> Fingerprints:
    """Fingerprints of the images at `indices` (default all), read in worker threads a few at a time."""
    indices = np.arange(g.n) if indices is None else _checked_indices(g, indices)
    digests = np.empty(len(indices), f"S{DIGEST_BYTES}")
    views, blank = np.empty(len(indices), np.int8), np.empty(len(indices), bool)
    starts = range(0, len(indices), CHUNK)
    with (FileImages(g).reader() as read, ThreadPoolExecutor(WORKERS) as pool,
          tqdm(total=len(indices), unit="image", disable=not progress, delay=2,
               desc=f"Fingerprinting {g.path.name}") as bar):
        # Each task keeps one image in memory at a time, so memory stays a few images whatever the file.
        for start, results in zip(starts, pool.map(lambda s: [_fingerprint(read(i)) for i in indices[s:s + CHUNK]],
                                                   starts)):
            stop = start + len(results)
            digests[start:stop], views[start:stop], blank[start:stop] = zip(*results)
            bar.update(len(results))
    return Fingerprints(indices, digests, views, blank)


def _fingerprint(image: np.ndarray) -> tuple[bytes, int, bool]:
    """(digest, view, blank) of one (H, W, 3) image.

    The digest is the smallest blake2b digest among the views whose row and column sums (found from the image's
    own) are the smallest: a choice made on the set of 8 views alone, so the same for any flip or rotation of the
    image, and usually one view, so one copy and one hash per image rather than eight.
    """
    h, w, _ = image.shape
    rows = image.reshape(h, -1).sum(axis=1, dtype=np.uint32)
    cols = image.reshape(h, -1).sum(axis=0, dtype=np.uint32).reshape(w, 3).sum(axis=1)
    blank = rows.min() == rows.max() and cols.min() == cols.max() and bool((image == image[0, 0]).all())
    keys = [np.concatenate(sums).tobytes() for sums in _view_sums(rows, cols)]
    smallest = min(keys)
    best = None
    for k in (k for k in range(8) if keys[k] == smallest):
        view = np.ascontiguousarray(image) if k == 0 else np.empty((h, w, 3) if k % 2 == 0 else (w, h, 3), np.uint8)
        if k:
            _place(view, image, k)
        digest = hashlib.blake2b(np.asarray(view.shape, "<u4").tobytes(), digest_size=DIGEST_BYTES)
        digest.update(view)  # after the shape: equal bytes of differently shaped images digest apart
        digest = digest.digest()
        if best is None or digest < best[0]:
            best = (digest, k)
    return best[0], best[1], blank


def _view_sums(rows: np.ndarray, cols: np.ndarray):
    """(row sums, column sums) of each dihedral view k = 0..7, from the image's own."""
    r, c = rows, cols
    return [(r, c), (c[::-1], r), (r[::-1], c[::-1]), (c, r[::-1]),
            (r, c[::-1]), (c[::-1], r[::-1]), (r[::-1], c), (c, r)]


def sky_positions(g: Galaxy10File) -> tuple[np.ndarray, np.ndarray] | None:
    """The file's `ra` and `dec` columns in degrees (float64, NaN where unknown), or None if it lacks either."""
    with h5py.File(g.path, "r") as f:
        columns = [f.get(name) for name in ("ra", "dec")]
        if not all(isinstance(c, h5py.Dataset) and c.shape == (g.n,) for c in columns):
            return None
        for name, column in zip(("ra", "dec"), columns):
            if not (np.issubdtype(column.dtype, np.floating) or np.issubdtype(column.dtype, np.integer)):
                raise GalaxyClassError(f"{g.path}: column '{name}' is {column.dtype}, expected numbers (degrees)")
        ra, dec = (c[()].astype(np.float64) for c in columns)
    outside = np.abs(dec) > 90
    if outside.any():
        raise GalaxyClassError(f"{g.path}: column 'dec' has {int(outside.sum())} values beyond ±90 degrees "
                               f"(e.g. row {int(np.flatnonzero(outside)[0])}: {dec[outside][0]:g}); "
                               f"positions are read in degrees")
    return ra, dec


def position_twins(ra, dec, tolerance_arcsec: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of rows within `tolerance_arcsec` of each other on the sky (degrees in), as (P, 2) int64
    sorted, with their separations in arcsec (P,); rows with an unknown (NaN) position pair with none."""
    pairs, separations = _near(ra, dec, ra, dec, tolerance_arcsec)
    keep = pairs[:, 0] < pairs[:, 1]
    return pairs[keep], separations[keep]


def _near(ra, dec, other_ra, other_dec, tolerance_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of row i of (ra, dec) and row j of (other_ra, other_dec) within the tolerance, sorted, with
    their separations in arcsec; a ball tree on the sphere (haversine), O(N log N)."""
    points, others = (np.radians(np.column_stack([np.asarray(d, np.float64), np.asarray(r, np.float64)]))
                      for r, d in ((ra, dec), (other_ra, other_dec)))  # haversine takes (latitude, longitude)
    known, other_known = (np.flatnonzero(np.isfinite(p).all(axis=1)) for p in (points, others))
    if not len(known) or not len(other_known):
        return np.empty((0, 2), np.int64), np.empty(0)
    tree = BallTree(others[other_known], metric="haversine")
    found, distances = tree.query_radius(points[known], r=tolerance_arcsec * ARCSEC, return_distance=True)
    counts = np.fromiter(map(len, found), np.int64, len(found))
    pairs = np.column_stack([np.repeat(known, counts), other_known[np.concatenate(found).astype(np.int64)]])
    separations = np.concatenate(distances) / ARCSEC
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], separations[order]


@dataclass(frozen=True, eq=False)
class Integrity:
    """What `check` found in a file; `group_ids` and `left_out` go to data.split_indices as groups and leave_out."""

    path: Path
    labels: np.ndarray
    class_names: tuple
    tolerance_arcsec: float
    positions_checked: bool
    pixel_groups: list  # arrays of >= 2 images with the same pixels under some flip/rotation, sorted
    turned: list  # per pixel group: whether its images differ as stored (a flip or rotation apart)
    position_pairs: np.ndarray  # (P, 2) rows within tolerance_arcsec on the sky
    separations: np.ndarray  # (P,) their separations in arcsec
    blank: np.ndarray  # images of one colour (e.g. all black), left out of the split
    groups: list  # connected duplicates (pixels or position) of >= 2 images, kept in one part of the split
    label_conflicts: list  # those of `groups` whose labels disagree
    group_ids: np.ndarray  # (N,) one id per group, a singleton's its own

    @property
    def left_out(self) -> np.ndarray:
        return self.blank

    def summary(self) -> list[str]:
        """Lines of text: what was found, with counts and the first few indices."""
        groups = self.pixel_groups
        examples = [" = ".join(map(str, group)) + (" (flipped or rotated)" if turned else "")
                    for group, turned in zip(groups, self.turned)]
        text = f"{_plural(len(groups), 'group')}, {_plural(sum(map(len, groups)), 'image')}"
        lines = [f"exact duplicates (pixels, any flip or rotation): {_counted(len(groups), text, examples)}"]
        within = f"same sky position within {self.tolerance_arcsec:g}″"
        if self.positions_checked:
            pairs = len(self.position_pairs)
            group_of = {int(i): n for n, group in enumerate(groups) for i in group}
            same = sum(group_of.get(int(i), -1) == group_of.get(int(j), -2) for i, j in self.position_pairs)
            text = _plural(pairs, "pair") + (f" ({same} of them also the same pixels)" if same else "")
            examples = [f"{i} ~ {j} ({arcsec:.2f}″)" for (i, j), arcsec in zip(self.position_pairs, self.separations)]
            lines.append(f"{within}: {_counted(pairs, text, examples)}")
        else:
            lines.append(f"{within}: not checked (the file has no ra/dec columns)")
        blank = len(self.blank)
        lines.append(f"blank images (one colour, left out of the split): "
                     f"{_counted(blank, str(blank), list(map(str, self.blank)))}")
        conflicts = len(self.label_conflicts)
        examples = [" = ".join(f"{i} ({self.class_names[self.labels[i]]})" for i in group)
                    for group in self.label_conflicts]
        lines.append(f"duplicate groups whose labels disagree: {_counted(conflicts, str(conflicts), examples)}")
        if self.groups:
            lines.append(f"kept whole in one part of the split: {_plural(len(self.groups), 'group')}, "
                         f"{_plural(sum(map(len, self.groups)), 'image')}")
        return lines

    def split_note(self) -> str:
        """One line on what shaped the split."""
        grouped = (f"{_plural(len(self.groups), 'group')} of copies ({_plural(sum(map(len, self.groups)), 'image')}) "
                   f"each kept in one part of the split") if self.groups else "no copies of one galaxy"
        blank = f"{_plural(len(self.blank), 'blank image')} left out" if len(self.blank) else "no blank image"
        checked = "" if self.positions_checked else " (sky positions not checked: no ra/dec columns)"
        return f"{grouped}; {blank}{checked}"

    def run_record(self) -> dict:
        """What a run saves in config.json: the counts and the summary lines (the indices go to split.npz)."""
        record = self.to_dict()
        return {"tolerance_arcsec": record["tolerance_arcsec"], "positions_checked": record["positions_checked"],
                "counts": record["counts"], "summary": self.summary()}

    def to_dict(self) -> dict:
        """Counts and indices as JSON-ready values."""
        def lists(groups):
            return [[int(i) for i in group] for group in groups]

        return {
            "tolerance_arcsec": self.tolerance_arcsec,
            "positions_checked": self.positions_checked,
            "counts": {
                "images": len(self.labels),
                "exact_duplicate_groups": len(self.pixel_groups),
                "exact_duplicate_images": sum(map(len, self.pixel_groups)),
                "position_pairs": len(self.position_pairs),
                "blank": len(self.blank),
                "label_conflicts": len(self.label_conflicts),
                "groups": len(self.groups),
                "grouped_images": sum(map(len, self.groups)),
            },
            "exact_duplicates": lists(self.pixel_groups),
            "position_pairs": lists(self.position_pairs),
            "blank": [int(i) for i in self.blank],
            "label_conflicts": lists(self.label_conflicts),
            "grouped": lists(self.groups),
            "left_out": [int(i) for i in self.left_out],
        }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _counted(count: int, text: str, examples: list[str]) -> str:
    """`text` (the count in words) and the first few examples, or "none"."""
    if not count:
        return "none"
    more = ", ..." if len(examples) > SHOWN else ""
    return f"{text}, e.g. {', '.join(examples[:SHOWN])}{more}"


def check(g: Galaxy10File, tolerance_arcsec: float = 1.0, progress: bool = False) -> Integrity:
    """Find duplicate images (any flip or rotation), rows within `tolerance_arcsec` on the sky (where the file has
    ra/dec), blank images, and the groups of duplicates a split must keep together."""
    _check_tolerance(tolerance_arcsec)
    prints = image_fingerprints(g, progress=progress)
    blank = np.flatnonzero(prints.blank)
    # Blank images are left out of the split, so they join no group: all-black ones would be a group of their own.
    kept = np.flatnonzero(~prints.blank)
    pixel_groups = [kept[group] for group in _equal(prints.digests[kept]) if len(group) > 1]
    turned = [len(np.unique(prints.views[group])) > 1 for group in pixel_groups]
    positions = sky_positions(g)
    if positions is None:
        position_pairs, separations = np.empty((0, 2), np.int64), np.empty(0)
    else:
        position_pairs, separations = position_twins(*positions, tolerance_arcsec)
    edges = [np.column_stack([group[:-1], group[1:]]) for group in pixel_groups]
    edges = np.concatenate([np.empty((0, 2), np.int64), *edges,
                            position_pairs[~np.isin(position_pairs, blank).any(axis=1)]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(g.n, g.n))
    _, group_ids = connected_components(graph, directed=False)
    groups = [group for group in _equal(group_ids) if len(group) > 1]
    conflicts = [group for group in groups if len(np.unique(g.labels[group])) > 1]
    return Integrity(g.path, g.labels, g.class_names, float(tolerance_arcsec), positions is not None, pixel_groups,
                     turned, position_pairs, separations, blank, groups, conflicts, group_ids.astype(np.int64))


def _check_tolerance(tolerance_arcsec: float) -> None:
    if not tolerance_arcsec >= 0:
        raise GalaxyClassError(f"position tolerance {tolerance_arcsec} arcsec: need a number of arcsec >= 0")


def _equal(values: np.ndarray) -> list[np.ndarray]:
    """Positions of equal values, one sorted array per distinct value, ordered by their first position."""
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    return [groups[k] for k in np.argsort(first)]


@dataclass(frozen=True, eq=False)
class Overlap:
    """How many of another file's galaxies a run has seen among its images (train+val)."""

    path: Path  # the other file
    n: int  # its images
    run_path: Path  # the run's file
    seen_images: int  # the run's images compared with
    tolerance_arcsec: float
    by_pixels: np.ndarray  # the other file's images whose pixels (any flip or rotation) the run has seen
    by_position: np.ndarray | None  # those within tolerance_arcsec of a run image on the sky; None: not checked
    blank: np.ndarray  # the other file's blank images

    @property
    def seen(self) -> np.ndarray:
        return np.union1d(self.by_pixels, self.by_pixels if self.by_position is None else self.by_position)

    @property
    def unseen(self) -> np.ndarray:
        """Neither seen (by pixels or position) nor blank: the ones to evaluate on."""
        return np.setdiff1d(np.arange(self.n), np.union1d(self.seen, self.blank))

    def summary(self) -> list[str]:
        """Lines of text: how many of the other file's images were seen, and how."""
        seen = len(self.seen)
        lines = [f"{self.path.name}: {seen} of its {self.n} images ({seen / self.n:.1%}) are among the "
                 f"{self.seen_images} training and validation images of {self.run_path.name}",
                 f"  same pixels (any flip or rotation): {len(self.by_pixels)}"]
        if self.by_position is None:
            lines.append("  same sky position: not checked (a file has no ra/dec columns)")
        else:
            lines.append(f"  same sky position within {self.tolerance_arcsec:g}″: {len(self.by_position)}")
        if len(self.blank):
            lines.append(f"  blank images (one colour): {len(self.blank)}")
        lines.append(f"  unseen: {len(self.unseen)}")
        return lines

    def to_dict(self) -> dict:
        return {
            "file": str(self.path),
            "images": self.n,
            "run_file": str(self.run_path),
            "seen_images": self.seen_images,
            "tolerance_arcsec": self.tolerance_arcsec,
            "seen": len(self.seen),
            "by_pixels": [int(i) for i in self.by_pixels],
            "by_position": None if self.by_position is None else [int(i) for i in self.by_position],
            "blank": [int(i) for i in self.blank],
            "unseen": [int(i) for i in self.unseen],
        }


def overlap(g: Galaxy10File, indices, other: Galaxy10File, tolerance_arcsec: float = 1.0,
            progress: bool = False) -> Overlap:
    """Which of `other`'s images are among `g`'s images at `indices` (a run's train+val): by pixels under any flip
    or rotation, and by sky position where both files have ra/dec; the rest, less blank images, are unseen."""
    _check_tolerance(tolerance_arcsec)
    indices = np.unique(_checked_indices(g, indices))
    ours, theirs = image_fingerprints(g, indices, progress), image_fingerprints(other, progress=progress)
    by_pixels = np.flatnonzero(np.isin(theirs.digests, ours.digests[~ours.blank]) & ~theirs.blank)
    our_positions, their_positions = sky_positions(g), sky_positions(other)
    by_position = None
    if our_positions is not None and their_positions is not None:
        ra, dec = (column[indices] for column in our_positions)
        pairs, _ = _near(*their_positions, ra, dec, tolerance_arcsec)
        by_position = np.unique(pairs[:, 0])
    blank = np.flatnonzero(theirs.blank)
    return Overlap(other.path, other.n, g.path, len(indices), float(tolerance_arcsec), by_pixels, by_position, blank)
