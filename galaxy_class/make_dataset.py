"""Making a Galaxy10-schema HDF5 file from a folder of raw survey cutouts (JPEG, PNG) and a CSV of their labels.

The CSV has a header row, a `file` column (image names, relative to the folder), a `label` column (a class
name or a class number) and any other columns (ra, dec, objid, ...), which become datasets of the file.
Each image is cut by a cutout recipe, so the file's images have the scale of the data sets it will meet.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from galaxy_class import cutout
from galaxy_class.data import open_galaxy10
from galaxy_class.errors import GalaxyClassError
from galaxy_class.images import read_rgb

FILE_COLUMN, LABEL_COLUMN = "file", "label"
RESERVED = ("images", "ans")  # the schema's own datasets: no extra column may take their names
MOST_SHOWN = 100  # bad rows listed in one error; a wrong folder would otherwise print a line per image
_WHOLE = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Row:
    """One data row of the CSV; `line` is its line number in the file (the header is line 1)."""

    line: int
    file: str
    label: str


@dataclass(frozen=True)
class Table:
    """The CSV: its rows, its extra columns (name -> the rows' values as text) and its malformed rows (line, why)."""

    path: Path
    rows: list[Row]
    extras: dict[str, list[str]]
    malformed: list[tuple[int, str]]


@dataclass(frozen=True)
class Made:
    """A written file and what was found on the way: image sides (after squaring) and how many were not square."""

    path: Path
    n: int
    size: int
    recipe: cutout.CutoutRecipe
    sides: dict[int, int]
    non_square: int

    def notes(self) -> list[str]:
        """One line for each kind of image that was not a raw cutout of the recipe's size."""
        r, notes = self.recipe, []
        for side, count in sorted(self.sides.items()):
            if side == r.raw_size:
                continue
            # As cutout.apply does: an image of the stored size is taken as already cut.
            done = ("stored as they are" if side == self.size else f"kept the central {r.crop_fraction:.3f} of each, "
                    f"the recipe's field of view, and resampled to {self.size} px")
            notes.append(f"{count} of {self.n} images are {side} px, not {r.raw_size} px raw cutouts: {done}")
        if self.non_square:
            notes.append(f"{self.non_square} of {self.n} images were not square: their central square was used")
        return notes


def make_dataset(folder, out, labels=None, *, like=None, class_names=None, size=None, raw_size=None,
                 crop=None, resample=None, progress=True, allow_outside=False) -> Made:
    """Write `out` from the images in `folder` listed in the CSV `labels` (default FOLDER/labels.csv).

    Class names, stored size and cutout recipe come from the options, or from the Galaxy10-schema file
    `like`. Every row is checked before an image is decoded; nothing is left behind on any error. Images
    outside `folder` (by a "..", an absolute path or a link) are refused unless `allow_outside`.
    """
    folder, out = Path(folder), Path(out)
    csv_path = Path(labels) if labels is not None else folder / "labels.csv"
    _check_out(out)
    if not folder.is_dir():
        raise GalaxyClassError(f"{folder}: {'is not a folder' if folder.exists() else 'no such folder'}")
    names, size, recipe = settings(like, class_names, size, raw_size, crop, resample)
    table = read_table(csv_path)
    names = names or names_from_labels(table)
    label_numbers, sides, non_square = check_rows(table, folder, names, progress, allow_outside)
    made = Made(out, len(table.rows), size, recipe, sides, non_square)
    _write(made, table, folder, label_numbers, names, progress)
    return made


def settings(like, class_names, size, raw_size, crop, resample):
    """(class names or None, stored size, recipe) from the options, or from `like` (the options must agree with it)."""
    names = parse_class_names(class_names) if class_names is not None else None
    if size is not None and size < 1:
        raise GalaxyClassError(f"--size {size}: the stored image size must be at least 1 pixel")
    if like is None:
        if size is None or raw_size is None:
            raise GalaxyClassError("say how to cut the images: --size S (the stored size) and --raw-size R "
                                   "(with --crop C and --resample), or --like FILE.h5 to take them from a data set")
        return names, size, _recipe(raw_size, raw_size if crop is None else crop, resample or "box")
    g = open_galaxy10(Path(like))
    side, width, _ = g.image_shape
    if side != width:
        raise GalaxyClassError(f"{like}: its images are {side}x{width}; make-dataset makes square images")
    recipe = cutout.read_recipe(g.path, g.source, side, len(g.class_names))
    theirs = {"--class-names": ",".join(g.class_names), "--size": side}
    if recipe is not None:
        theirs.update({"--raw-size": recipe.raw_size, "--crop": recipe.crop, "--resample": recipe.resample})
    given = {"--class-names": names and ",".join(names), "--size": size, "--raw-size": raw_size, "--crop": crop,
             "--resample": resample}
    mismatch = [f"{option} {given[option]} (it has {value})" for option, value in theirs.items()
                if given[option] is not None and given[option] != value]
    if mismatch:
        raise GalaxyClassError(f"{like}: --like takes the file's own settings, and these differ: "
                               f"{'; '.join(mismatch)}; drop them, or drop --like")
    if recipe is None:
        if raw_size is None:
            raise GalaxyClassError(f"{like}: records no cutout recipe (attribute '{cutout.ATTRIBUTE}'); "
                                   f"pass --raw-size R (and --crop C) to say how its images were cut")
        recipe = _recipe(raw_size, raw_size if crop is None else crop, resample or "box")
    return g.class_names, side, recipe


def _recipe(raw_size, crop, resample) -> cutout.CutoutRecipe:
    try:
        return cutout.CutoutRecipe(raw_size, crop, resample)
    except ValueError as e:
        raise GalaxyClassError(f"--raw-size/--crop/--resample: {e}") from None


def parse_class_names(text: str) -> tuple[str, ...]:
    """--class-names "A,B,C" as ("A", "B", "C"); GalaxyClassError for a blank or repeated name."""
    names = tuple(name.strip() for name in text.split(","))
    if "" in names:
        raise GalaxyClassError(f"--class-names {text!r}: a class name is blank; give names separated by commas")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise GalaxyClassError(f"--class-names {text!r}: {', '.join(repeated)} named more than once")
    return names


def read_table(path: Path) -> Table:
    """The CSV's rows and extra columns; GalaxyClassError for a missing, unreadable or empty CSV or a bad header."""
    records = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            start = 1
            for fields in reader:
                if any(field.strip() for field in fields):  # blank lines are not rows
                    records.append((start, fields))
                start = reader.line_num + 1
    except FileNotFoundError:
        raise GalaxyClassError(f"{path}: no such file (pass the labels CSV with --labels)") from None
    except IsADirectoryError:
        raise GalaxyClassError(f"{path}: is a folder, not a CSV file") from None
    except UnicodeDecodeError as e:
        raise GalaxyClassError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x}); save it as UTF-8") from None
    except csv.Error as e:
        raise GalaxyClassError(f"{path} line {start}: not valid CSV ({e})") from None
    except OSError as e:
        raise GalaxyClassError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not records:
        raise GalaxyClassError(f"{path}: is empty; expected a header row such as {FILE_COLUMN},{LABEL_COLUMN} "
                               f"and a row per image")
    header = [name.strip() for name in records[0][1]]
    _check_header(path, header)
    if len(records) == 1:
        raise GalaxyClassError(f"{path}: has a header but no rows")
    extras = {name: [] for name in header if name not in (FILE_COLUMN, LABEL_COLUMN)}
    rows, malformed = [], []
    for line, fields in records[1:]:
        if len(fields) != len(header):
            malformed.append((line, f"has {len(fields)} values, the header has {len(header)} columns"))
            continue
        values = dict(zip(header, (field.strip() for field in fields)))
        rows.append(Row(line, values[FILE_COLUMN], values[LABEL_COLUMN]))
        for name, column in extras.items():
            column.append(values[name])
    return Table(path, rows, extras, malformed)


def _check_header(path: Path, header: list[str]) -> None:
    for required in (FILE_COLUMN, LABEL_COLUMN):
        if required not in header:
            hint = ("; the header has one column: is the file separated by commas?"
                    if len(header) == 1 and any(c in header[0] for c in ";\t|") else "")
            raise GalaxyClassError(f"{path}: no '{required}' column (its columns: {', '.join(header)}); the "
                                   f"header needs {FILE_COLUMN} (image names) and {LABEL_COLUMN} (class names or "
                                   f"numbers){hint}")
    for i, name in enumerate(header, 1):
        if not name:
            raise GalaxyClassError(f"{path}: column {i} of the header has no name")
        if header.count(name) > 1:
            raise GalaxyClassError(f"{path}: the header names column '{name}' more than once")
        if name in RESERVED:
            raise GalaxyClassError(f"{path}: column '{name}' would replace the data set's own '{name}'; rename it")
        if "/" in name or name == ".":
            raise GalaxyClassError(f"{path}: column '{name}' cannot name a dataset of an HDF5 file; rename it")


def names_from_labels(table: Table) -> tuple[str, ...]:
    """Class names for a CSV that gives labels as names: the names, sorted (label i is the i-th)."""
    numbered = [row for row in table.rows if _WHOLE.fullmatch(row.label)]
    if numbered:
        first = numbered[0]
        raise GalaxyClassError(
            f"{table.path}: {len(numbered)} labels are class numbers (line {first.line}: {first.label}) but no class "
            f'names were given: pass --class-names "A,B,..." (in label order) or --like FILE.h5')
    return tuple(sorted({row.label for row in table.rows if row.label}))


def check_rows(table: Table, folder: Path, names, progress: bool = True,
               allow_outside: bool = False) -> tuple[list[int], dict[int, int], int]:
    """(label numbers, images per side, non-square images) of the rows; every bad row in one GalaxyClassError.

    Images are only opened to read their headers here: decoding waits until the file is written. A file
    listed twice, by the same name or by two names (a link, "a/../b"), is a bad row: one galaxy could
    otherwise land in both the training and the test split.
    """
    numbers, sides, non_square, missing, problems, first_line = [], {}, 0, 0, list(table.malformed), {}
    inside = folder.resolve()
    for row in _bar(table.rows, progress, desc="checking", leave=False):
        wrong = []
        if not row.file:
            wrong.append("empty file name")
        else:
            path = folder / row.file
            key, where = _identity(path), _resolved(path)
            if where is None:
                wrong.append(f"{row.file}: cannot be followed to a file (a loop of links?)")
            elif not allow_outside and not where.is_relative_to(inside):
                wrong.append(f"{row.file}: is outside {folder}; images must be in the folder (or allow "
                             f"files outside it with --allow-outside-folder)")
            elif key in first_line:
                wrong.append(f"{row.file}: listed again (first on line {first_line[key]})")
            else:
                first_line[key] = row.line
                if not path.exists():
                    wrong.append(f"{row.file}: no such file in {folder}")
                    missing += 1
                else:
                    try:
                        width, height = _image_size(path, row.file)
                        sides[min(width, height)] = sides.get(min(width, height), 0) + 1
                        non_square += width != height
                    except GalaxyClassError as e:
                        wrong.append(str(e))
        try:
            numbers.append(label_number(row.label, names))
        except GalaxyClassError as e:
            wrong.append(str(e))
        if wrong:
            problems.append((row.line, "; ".join(wrong)))
    n_rows = len(table.rows) + len(table.malformed)
    hint = f"; none of the files is in {folder}: is it the right folder?" if missing == n_rows else ""
    _raise_if_any(table.path, [f"{table.path} line {line}: {why}" for line, why in sorted(problems)], n_rows, hint)
    return numbers, sides, non_square


def _identity(path: Path):
    """What makes two names the same file: its device and inode where it exists, else its normalised name."""
    try:
        info = path.stat()
    except (OSError, ValueError):  # missing (reported as such), or a name the system cannot take
        info = None
    if info is None or not info.st_ino:  # some file systems (FAT, network drives) number no inodes
        return os.path.normcase(os.path.normpath(path))
    return info.st_dev, info.st_ino


def _resolved(path: Path) -> Path | None:
    """`path` with links followed and ".." resolved; None if that cannot be done."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links (RuntimeError before Python 3.13)
        return None


def _image_size(path: Path, name: str) -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding its pixels; GalaxyClassError if not an image."""
    if path.is_dir():
        raise GalaxyClassError(f"{name}: is a folder, not an image")
    try:
        with Image.open(path) as image:
            return image.size
    except UnidentifiedImageError:
        raise GalaxyClassError(f"{name}: not an image PIL can read (PNG, JPEG, ...)") from None
    except Image.DecompressionBombError as e:
        raise GalaxyClassError(f"{name}: too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise GalaxyClassError(f"{name}: cannot read it as an image ({e})") from None


def label_number(label: str, names) -> int:
    """A label (a class name, or a number 0..K-1) as its class number; a name wins over a number it looks like."""
    if label in names:
        return names.index(label)
    if not label:
        raise GalaxyClassError("empty label")
    if _WHOLE.fullmatch(label):
        if 0 <= int(label) < len(names):
            return int(label)
        raise GalaxyClassError(f"label {label} is out of range: {len(names)} classes, labels 0..{len(names) - 1}")
    close = difflib.get_close_matches(label, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise GalaxyClassError(f"label '{label}' is not one of the classes {', '.join(names)}{hint}")


def _raise_if_any(path: Path, problems: list[str], n_rows: int, hint: str = "") -> None:
    if not problems:
        return
    shown = problems[:MOST_SHOWN]
    if len(problems) > MOST_SHOWN:
        shown.append(f"... and {len(problems) - MOST_SHOWN} more bad rows")
    shown.append(f"{path}: {len(problems)} of {n_rows} rows are bad; nothing was written{hint}")
    raise GalaxyClassError("\n".join(shown))


def column(values: list[str]) -> np.ndarray:
    """A CSV column as int64 if every value is a whole number, float64 if every value is a number or blank (NaN),
    else UTF-8 strings."""
    if all(_WHOLE.fullmatch(v) and -2**63 <= int(v) < 2**63 for v in values):
        return np.array([int(v) for v in values], np.int64)
    numbers = [_number(v) for v in values]
    # Whole numbers beyond 2**53 (object ids) would lose digits as floats: such a column stays text.
    if None not in numbers and not any(_WHOLE.fullmatch(v) and abs(int(v)) > 2**53 for v in values):
        return np.array(numbers, np.float64)
    return np.array(values, dtype=h5py.string_dtype())


def _number(text: str) -> float | None:
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise GalaxyClassError(f"{out}: already exists; remove it or choose another --out")
    if not out.parent.is_dir():
        raise GalaxyClassError(f"{out}: its folder {out.parent} does not exist")


def _bar(rows, progress: bool, **options):
    # disable=None: no bar where stderr is not a terminal, so logs and captured output stay readable.
    return tqdm(rows, unit="image", disable=None if progress else True, **options)


def _write(made: Made, table: Table, folder: Path, numbers: list[int], names, progress: bool) -> None:
    """Write the file into a temporary file beside `made.path`, check it, then rename it; remove it on any error."""
    tmp = made.path.parent / f".{made.path.name}.{secrets.token_hex(4)}.part"
    size, problems = made.size, []
    try:
        f = h5py.File(tmp, "x")  # "x": fails rather than truncate a file of that name
    except OSError as e:
        raise GalaxyClassError(f"{made.path}: cannot write in {made.path.parent} ({e})") from None
    try:
        with f:
            # Gzip with one chunk per image, like the Galaxy10 files: a batch decompresses only its own images.
            images = f.create_dataset("images", (made.n, size, size, 3), np.uint8, chunks=(1, size, size, 3),
                                      compression="gzip", compression_opts=4)
            f.create_dataset("ans", data=np.array(numbers, np.min_scalar_type(len(names) - 1)))
            for name, values in table.extras.items():
                f.create_dataset(name, data=column(values))
            f.attrs["class_names"] = list(names)
            cutout.write_recipe(f, made.recipe)
            f.attrs["source"] = f"made by galaxy-class make-dataset from {folder} ({table.path.name}, {made.n} images)"
            for i, row in enumerate(_bar(table.rows, progress, desc=made.path.name)):
                # Decoding goes on after a bad image, so that one run reports them all.
                try:
                    image = read_rgb(folder / row.file, f"{table.path} line {row.line}: {row.file}")
                except GalaxyClassError as e:
                    problems.append(str(e))
                    continue
                if not problems:
                    images[i] = cutout.apply(image, size, made.recipe)[0]
        _raise_if_any(table.path, problems, made.n)
        g = open_galaxy10(tmp)
        if g.n != made.n or g.class_names != tuple(names):
            raise GalaxyClassError(f"{made.path}: the written file reads back wrong ({g.n} images, {g.class_names})")
        taken = GalaxyClassError(f"{made.path}: appeared while the file was made; remove it or choose another --out")
        try:
            os.link(tmp, made.path)  # unlike a rename, fails if the name was taken meanwhile: nothing is replaced
        except FileExistsError:
            raise taken from None
        except OSError:  # a file system without hard links: check, then rename
            if made.path.exists():
                raise taken from None
            os.replace(tmp, made.path)
    finally:
        tmp.unlink(missing_ok=True)
