"""Survey-scale prediction: a catalogue with one row per galaxy of a Galaxy10-schema file or a folder of cutouts.

Images are read and classified in batches, rows are appended to a `.part` file as they are done (so memory
stays flat and an interrupted run picks up where it stopped), and the catalogue appears under its own name
only when complete: CSV, or FITS through astropy.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from galaxy_class.batches import FileImages, read_batches
from galaxy_class.data import open_galaxy10
from galaxy_class.errors import GalaxyClassError
from galaxy_class.images import IMAGE_SUFFIXES, image_files, load_images

FORMATS = (".csv", ".fits")


def column(class_name: str) -> str:
    """The probability column of a class: p_ and its name with anything but letters and digits as `_`."""
    return "p_" + re.sub(r"\W+", "_", class_name).strip("_")


class _FileSource:
    """Batches of a Galaxy10-schema file in file order, with its per-galaxy columns (ra, dec, objid, ...)."""

    def __init__(self, path):
        self.g = open_galaxy10(Path(path))
        with h5py.File(self.g.path, "r") as f:
            self.columns = [key for key, item in f.items() if key not in ("images", "ans")
                            and isinstance(item, h5py.Dataset) and item.shape == (self.g.n,)]
        self.n = self.g.n

    def names(self):
        return ["index", *self.columns, "true_class"]

    def batches(self, start, size, config):
        # Worker threads read and inflate the next batches while the model classifies this one.
        firsts = range(start, self.n, size)
        indices = [np.arange(first, min(first + size, self.n)) for first in firsts]
        with h5py.File(self.g.path, "r") as f:
            for first, images in zip(firsts, read_batches(FileImages(self.g), indices)):
                last = first + len(images)
                ids = {key: f[key][first:last] for key in self.columns}
                rows = [[i, *(_plain(ids[key][i - first]) for key in self.columns),
                         self.g.class_names[self.g.labels[i]]] for i in range(first, last)]
                yield images, rows


class _FolderSource:
    """Batches of the image files of a folder, in name order, cut by the run's cutout recipe (or `crop_fraction`)."""

    def __init__(self, folder, crop_fraction=None):
        self.paths = image_files(folder)
        if not self.paths:
            raise GalaxyClassError(f"{folder}: no {', '.join(IMAGE_SUFFIXES)} files in it")
        self.n = len(self.paths)
        self.crop_fraction = crop_fraction

    def names(self):
        return ["file"]

    def batches(self, start, size, config):
        for first in range(start, self.n, size):
            paths = self.paths[first:first + size]
            prepared = load_images(paths, config, self.crop_fraction)
            yield np.stack([image for image, _ in prepared]), [[p.name] for p in paths]


def write_catalogue(model, config, source, out, tta=False, batch_size=256, overwrite=False, progress=True,
                    crop_fraction=None, model_id=""):
    """Classify every galaxy of `source` (a Galaxy10-schema file or a folder of image files) into the catalogue
    `out` (.csv or .fits); returns the number of rows. A `.part` file left by an interrupted run of the same
    model (`model_id`), source and settings is continued; any other is started afresh."""
    from galaxy_class.predict import predict_views

    if batch_size < 1:
        raise GalaxyClassError(f"batch size {batch_size}: must be at least 1")
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise GalaxyClassError(f"{out}: a catalogue is written as {' or '.join(FORMATS)}")
    if out.is_dir():
        raise GalaxyClassError(f"{out}: is a folder; give the catalogue's file name")
    if out.exists() and not overwrite:
        raise GalaxyClassError(f"{out}: already exists; remove it, pass --overwrite, or choose another --out")
    if not out.parent.is_dir():
        raise GalaxyClassError(f"{out.parent}: no such folder to write the catalogue in")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise GalaxyClassError(f"{out}: cannot be written here (permission denied)")
    if out.suffix.lower() == ".fits":
        _astropy_table()  # fail before the work, not after it
    source = Path(source)
    if not source.exists():
        raise GalaxyClassError(f"{source}: no such file or folder")
    if source.is_dir():
        reader = _FolderSource(source, crop_fraction)
    elif crop_fraction is not None:
        raise GalaxyClassError(f"{source}: --crop-fraction cuts image files; a file's images are already cut")
    else:
        reader = _FileSource(source)
        if tuple(reader.g.image_shape) != tuple(config.input_shape):
            raise GalaxyClassError(f"{source}: {_shape(reader.g.image_shape)} images, but the model takes "
                                   f"{_shape(config.input_shape)} ones; make a file of such images (make-dataset), "
                                   f"or classify a folder of the image files, which are cut to the model's size")
    header = [*reader.names(), "predicted_class", "probability", *map(column, config.class_names)]
    if tta:
        header.append("tta_spread")
    part = out.with_name(out.name + ".part")
    # What the rows of a .part file were made from: only the same run of the same model may continue them.
    made_from = json.dumps({"model": model_id, "source": str(source.resolve()), "n": reader.n, "tta": tta,
                            "crop_fraction": crop_fraction, "header": header})
    stamp = part.with_name(part.name + ".json")
    # --overwrite replaces a finished catalogue, never the unfinished rows of this same catalogue: they go on.
    done = _rows_done(part, header) if stamp.exists() and stamp.read_text() == made_from else 0
    if done:
        print(f"note: {part}: continuing after the {done:,} of {reader.n:,} galaxies already classified (remove it "
              f"to start again)", file=sys.stderr)
    stamp.write_text(made_from)
    with open(part, "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if done == 0:
            f.truncate(0)
            writer.writerow(header)
        with tqdm(total=reader.n, initial=done, unit="galaxy", disable=not progress, desc=out.name) as bar:
            for images, rows in reader.batches(done, batch_size, config):
                views = predict_views(model, images, tta=tta)
                probs = views.mean(axis=0)
                top = probs.argmax(axis=1)
                for i, row in enumerate(rows):
                    extra = [f"{views[:, i, top[i]].std():.6f}"] if tta else []
                    writer.writerow([*row, config.class_names[top[i]], f"{probs[i, top[i]]:.6f}",
                                     *(f"{p:.6f}" for p in probs[i]), *extra])
                f.flush()  # a kill loses at most the batch in flight
                bar.update(len(rows))
    if out.suffix.lower() == ".fits":
        table = _astropy_table().read(part, format="ascii.csv")
        tmp = out.with_name(f".{out.name}.tmp")
        table.write(tmp, format="fits", overwrite=True)
        os.replace(tmp, out)
        part.unlink()
    else:
        os.replace(part, out)
    stamp.unlink()
    return reader.n


def _rows_done(part: Path, header) -> int:
    """Rows already in a `.part` file written with the same columns; 0 if there is none (or another kind)."""
    if not part.exists():
        return 0
    content = part.read_bytes()
    complete = content[:content.rfind(b"\n") + 1]  # a last line without its newline was cut off mid-write
    rows = list(csv.reader(io.StringIO(complete.decode(), newline="")))  # rows as the CSV reader counts them
    if not rows or rows[0] != header:
        return 0
    with open(part, "r+b") as f:
        f.truncate(len(complete))
    return len(rows) - 1


def _shape(shape):
    return "x".join(map(str, shape[:2])) + " pixel"


def _plain(value):
    return value.decode() if isinstance(value, bytes) else value.item() if hasattr(value, "item") else value


def _astropy_table():
    try:
        from astropy.table import Table
    except ImportError:
        raise GalaxyClassError("writing FITS needs astropy (pip install astropy); or write a .csv catalogue") from None
    return Table
