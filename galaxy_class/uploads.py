"""Decoding an uploaded image file into the model's uint8 input: only PNG and JPEG, bounded in pixels and in
decodes at once, cut by the run's cutout recipe. The bytes stay in memory and are never saved."""

import ctypes
import io
import math
import threading

from PIL import Image, UnidentifiedImageError

from galaxy_class import cutout
from galaxy_class.errors import GalaxyClassError
from galaxy_class.images import to_rgb8

# Survey cutouts are at most a few thousand pixels across. A small file that claims more pixels (a
# "decompression bomb") is refused before its pixels are read.
MAX_PIXELS = 4096 * 4096
# A larger JPEG (a camera's 24 MP photo) is decoded at 1/2, 1/4 or 1/8 scale by libjpeg when the model needs
# few enough of its pixels; its header alone tells how large it is.
MAX_JPEG_PIXELS = 25_000_000
# ... but never to fewer than 4 times the pixels across that the model keeps: images up to 8 times that size
# (under 1,130 px for the SDSS cutout recipe) are decoded whole, exactly as `predict` decodes them.
JPEG_DRAFT_MARGIN = 4
DECODES_AT_ONCE = 2  # each decode may briefly hold a few hundred MB; more at once would not be faster on a few cores
FORMATS = ("PNG", "JPEG")
# A phone's camera JPEG often carries a second picture (a depth map, a preview): PIL calls it MPO and reads
# its first picture as a JPEG, which is what `predict` classifies.
SAME_AS = {"MPO": "JPEG"}

_decodes = threading.BoundedSemaphore(DECODES_AT_ONCE)
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc (Linux)
except (OSError, AttributeError, TypeError):  # not glibc; CDLL(None) is a TypeError on Windows
    def _malloc_trim(pad):
        return 0


def decode_upload(data, name, stored_size, recipe=None, crop_fraction=None):
    """An uploaded file's bytes as the model's uint8 input and a note on how it was cut; GalaxyClassError (for
    the page) if it is no usable image.

    At most DECODES_AT_ONCE run at a time. A JPEG far larger than the model needs is decoded at reduced scale
    (see JPEG_DRAFT_MARGIN): the model then sees pixels within a few grey levels of a full decode.
    """
    if not data:
        raise GalaxyClassError(f"{name}: the file is empty")
    with _decodes:
        try:
            return _decode(data, name, stored_size, recipe, crop_fraction)
        finally:
            _malloc_trim(0)  # glibc would otherwise keep the freed pixels, and the server would stay at its peak


def _decode(data, name, stored_size, recipe, crop_fraction):
    kind = None
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = SAME_AS.get(image.format, image.format), image.size
            if kind not in FORMATS:
                raise GalaxyClassError(f"{name}: is a {kind} image; upload a {' or '.join(FORMATS)} file")
            limit = MAX_JPEG_PIXELS if kind == "JPEG" else MAX_PIXELS
            if width * height > limit:
                raise GalaxyClassError(f"{name}: {width}x{height} pixels is too large (at most {limit:,} "
                                       f"pixels for a {kind} file)")
            fraction, note = cutout.crop_fraction_for(min(width, height), stored_size, recipe, crop_fraction)
            if kind == "JPEG":
                wanted = math.ceil(JPEG_DRAFT_MARGIN * stored_size / fraction)
                image.draft(None, (wanted, wanted))
            if image.size[0] * image.size[1] > MAX_PIXELS:
                raise GalaxyClassError(
                    f"{name}: {width}x{height} pixels is too large to keep its central {fraction:.3g} (at most "
                    f"{MAX_PIXELS:,} pixels at full resolution; a larger crop fraction needs fewer)")
            image.load()
            rgb = to_rgb8(image)
    except (GalaxyClassError, MemoryError):
        raise
    except Image.DecompressionBombError:
        raise GalaxyClassError(f"{name}: too large (more than {MAX_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise GalaxyClassError(f"{name}: not an image; upload a {' or '.join(FORMATS)} file") from None
    except Exception as e:  # whatever a decoder raises on hostile data is the file's fault
        what = f"the {kind} file is damaged or truncated" if kind else "cannot be read as an image"
        raise GalaxyClassError(f"{name}: {what} ({e})") from None
    # The note describes the file as sent; the cut keeps the same share of a reduced-scale JPEG.
    return cutout.apply(rgb, stored_size, recipe, fraction)[0], note
