"""The cutout recipe: how a data set's stored images were cut from raw survey cutouts, and applying it again.

A model learns from stored images (Galaxy10 SDSS: the central 207x207 pixels of a 424x424 cutout,
box-filtered down 3x to 69x69). A user holds the raw cutouts. Cutting those by the same recipe shows
the model a galaxy at the scale it learned; shrinking the whole cutout shows it one three times smaller.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import h5py
import numpy as np
from PIL import Image

from galaxy_class.errors import GalaxyClassError

ATTRIBUTE = "cutout"  # the HDF5 attribute: a JSON string {"raw_size": 423, "crop": 207, "resample": "box"}
RESAMPLING = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
              "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class CutoutRecipe:
    """Stored images are the central `crop` x `crop` pixels of `raw_size`-pixel cutouts, resampled by `resample`."""

    raw_size: int
    crop: int
    resample: str = "box"

    def __post_init__(self):
        if not (isinstance(self.raw_size, int) and isinstance(self.crop, int) and 0 < self.crop <= self.raw_size):
            raise ValueError(f"crop {self.crop!r} and raw_size {self.raw_size!r}: need whole numbers, 0 < crop <= raw_size")
        if self.resample not in RESAMPLING:
            raise ValueError(f"resample {self.resample!r}: choose one of {', '.join(RESAMPLING)}")

    @property
    def crop_fraction(self) -> float:
        """The share of a raw cutout's width that the stored images keep."""
        return self.crop / self.raw_size

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_value(cls, value, where) -> CutoutRecipe:
        """A recipe from its JSON string or dict; GalaxyClassError naming `where` if it is malformed."""
        try:
            fields = json.loads(value) if isinstance(value, (str, bytes)) else dict(value)
            return cls(int(fields["raw_size"]), int(fields["crop"]), str(fields.get("resample", "box")))
        except (ValueError, TypeError, KeyError) as e:
            raise GalaxyClassError(f"{where}: cutout recipe {value!r} is not valid ({e}); expected JSON like "
                                   '{"raw_size": 424, "crop": 207, "resample": "box"}') from None


# Galaxy10 SDSS: "The original images are 424x424, but were cropped to 207x207 centered at the images and
# then downscaled 3 times to 69x69" (astroNN documentation, Galaxy10 page).
# Galaxy10 DECaLS: 512x512 grz cutouts at 0.262"/pixel from the Legacy Surveys viewer (henrysky/Galaxy10,
# downloader_*_dr8.py) stored as 256x256 (Galaxy10 README): the whole field, halved. The resampling filter
# is not documented; box (a 2x2 mean) is our assumption.
BUILTIN = {
    "galaxy10_sdss": CutoutRecipe(424, 207, "box"),
    "galaxy10_decals": CutoutRecipe(512, 512, "box"),
}


def read_recipe(path, source: str | None = None, image_size: int | None = None,
                n_classes: int | None = None) -> CutoutRecipe | None:
    """The recipe of a Galaxy10-schema file: its `cutout` attribute, else the built-in one of a Galaxy10
    data set recognised by name, or by its image size and number of classes; None when unknown."""
    with h5py.File(path, "r") as f:
        value = f.attrs.get(ATTRIBUTE)
    if value is not None:
        return CutoutRecipe.from_value(value, f"{path} (attribute '{ATTRIBUTE}')")
    if source in BUILTIN:
        return BUILTIN[source]
    from galaxy_class.data import DATASETS  # data imports nothing from here; the sizes live with the specs

    matches = [name for name, spec in DATASETS.items()
               if (spec.image_size, len(spec.class_names)) == (image_size, n_classes) and name in BUILTIN]
    return BUILTIN[matches[0]] if len(matches) == 1 else None


def write_recipe(h5file: h5py.File, recipe: CutoutRecipe) -> None:
    """Record `recipe` in an open HDF5 file, in the form every reader of the attribute expects."""
    h5file.attrs[ATTRIBUTE] = recipe.to_json()


def parse_crop_fraction(value) -> float:
    """A crop fraction from the command line or the page: a number in (0, 1]; GalaxyClassError otherwise."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0 < fraction <= 1:
        raise GalaxyClassError(f"crop fraction {value!r}: must be a number in (0, 1]; 1.0 keeps the whole image")
    return fraction


def crop_fraction_for(side: int, stored_size: int, recipe: CutoutRecipe | None,
                      crop_fraction: float | None = None) -> tuple[float, str]:
    """(share of the image's width to keep, what was done and why) for a square image `side` pixels wide."""
    if crop_fraction is not None:
        crop_fraction = parse_crop_fraction(crop_fraction)
        if round(side * crop_fraction) < 1:  # as apply() counts the pixels it keeps
            raise GalaxyClassError(f"crop fraction {crop_fraction:g}: keeps less than one pixel of a {side} px "
                                   f"image (1/{side} keeps one)")
        return crop_fraction, f"kept the central {crop_fraction:g} of the image, as asked"
    if side == stored_size:
        return 1.0, f"used as is: {side} px is the size of the model's training images"
    if recipe is None:
        return 1.0, "resized the whole image: the run records no cutout recipe"
    if side == recipe.raw_size:
        return recipe.crop_fraction, (f"cut as the training images were: central {recipe.crop} of "
                                      f"{recipe.raw_size} px, {recipe.resample}-resampled to {stored_size} px")
    return recipe.crop_fraction, (
        f"{side} px is neither the raw cutout size ({recipe.raw_size} px) nor the training image size "
        f"({stored_size} px): kept the central {recipe.crop_fraction:.3f} of it, the training images' field "
        f"of view (--crop-fraction 1.0 keeps the whole image)")


def apply(image: Image.Image, stored_size: int, recipe: CutoutRecipe | None,
          crop_fraction: float | None = None) -> tuple[np.ndarray, str]:
    """An RGB image cut and resampled to uint8 (stored_size, stored_size, 3) by the recipe, and a note on what was done.

    A non-square image is first centre-cropped to a square, as survey cutouts are square.
    """
    side = min(image.size)
    image = image.crop(_centred(image.size, side))
    fraction, note = crop_fraction_for(side, stored_size, recipe, crop_fraction)
    keep = max(1, round(side * fraction))
    if keep != side:
        image = image.crop(_centred(image.size, keep))
    if image.size != (stored_size, stored_size):
        image = image.resize((stored_size, stored_size), RESAMPLING[recipe.resample if recipe else "box"])
    return np.asarray(image, dtype=np.uint8), note


def _centred(size, side):
    """The box of the central `side` x `side` pixels of an image of `size`; an odd margin leaves its extra pixel right/below."""
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return left, top, left + side, top + side
