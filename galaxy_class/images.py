"""Image files (PNG, JPEG, ...) as the model's uint8 input: decoding every pixel format to 8-bit RGB, then the cutout recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from galaxy_class import cutout
from galaxy_class.errors import GalaxyClassError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def image_files(folder) -> list:
    """The JPEG and PNG files of a folder, in name order."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB with the right brightness.

    Greyscale is repeated in the three channels; transparency is laid over black (empty sky); 16-bit
    images are scaled down, not clipped (PIL's convert("RGB") turns every 16-bit value above 255 white).
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"{image.mode} pixels outside 0..65535 (range {values.min()}..{values.max()})")
        grey = np.round(values.astype(np.float64) / 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        raise ValueError("floating-point pixels have no fixed brightness scale; save the image as 8- or 16-bit")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image).convert("RGB")
    return image.convert("RGB")


def read_rgb(source, name=None) -> Image.Image:
    """The image in a file (a path or a binary file object) as 8-bit RGB; GalaxyClassError naming it if unusable."""
    name = name or source
    try:
        with Image.open(source) as image:
            image.load()
            return to_rgb8(image)
    except FileNotFoundError:
        raise GalaxyClassError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise GalaxyClassError(f"{name}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise GalaxyClassError(f"{name}: not an image PIL can read (PNG, JPEG, ...)") from None
    except Image.DecompressionBombError as e:
        raise GalaxyClassError(f"{name}: too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # what PIL's decoders raise on damaged data
        raise GalaxyClassError(f"{name}: cannot read it as an image ({e})") from None


def load_image(source, stored_size: int, recipe: cutout.CutoutRecipe | None = None,
               crop_fraction: float | None = None, name=None) -> tuple[np.ndarray, str]:
    """An image file as uint8 (stored_size, stored_size, 3) cut by the run's cutout recipe, and a note on what was done."""
    image = read_rgb(source, name)
    try:
        return cutout.apply(image, stored_size, recipe, crop_fraction)
    except GalaxyClassError as e:  # a crop fraction too small for this image: say which image
        raise GalaxyClassError(f"{name or source}: {e}") from None


def load_images(paths, config, crop_fraction=None) -> list[tuple[np.ndarray, str]]:
    """(uint8 image, note on how it was cut) for each image file, as the model of the run with `config` expects."""
    return [load_image(path, config.input_shape[0], run_recipe(config), crop_fraction) for path in paths]


def run_recipe(config) -> cutout.CutoutRecipe | None:
    """The cutout recipe a run (its Config) was trained with; None for runs made before recipes were recorded."""
    return cutout.CutoutRecipe.from_value(config.cutout, "config.json") if config.cutout else None
