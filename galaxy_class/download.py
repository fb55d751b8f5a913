"""The downloadable Galaxy10 data sets (facts, hosts) and fetching them into astroNN's cache folder."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import stat
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from galaxy_class.errors import GalaxyClassError

TIMEOUT_S = 60  # per connection attempt and per read: a silent host is passed over, not waited on forever
# A download in progress writes its part file at least every TIMEOUT_S; one untouched for a day was left by a
# download that was killed, and is removed when the next download of that file starts.
STALE_PART_S = 24 * 3600


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable Galaxy10 data set: file name and checksum are astroNN's, URLs in the order tried.

    `max_bytes` bounds the file's size: a host that sends more is cut off there and passed over.
    """

    name: str
    file_name: str
    urls: tuple[str, ...]
    sha256: str
    max_bytes: int
    n_images: int
    image_size: int
    class_names: tuple[str, ...]


# Zenodo first, where astroNN downloads from since July 2024 (commit d351b1b6); the University of
# Toronto pages that astroNN 1.1.0 used stay as fallback. Both serve the same files (same SHA-256).
# max_bytes: above each file's pixels uncompressed (17,736 x 256 x 256 x 3 = 3.49 GB; 21,785 x 69 x 69 x 3 =
# 311 MB) with room for labels and HDF5's own data; the files, gzip-compressed, are about 2.7 GB and 200 MB.
DATASETS = {
    "galaxy10_decals": DatasetSpec(
        name="galaxy10_decals",
        file_name="Galaxy10_DECals.h5",
        urls=(
            "https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5",
            "https://www.astro.utoronto.ca/~hleung/shared/Galaxy10/Galaxy10_DECals.h5",
        ),
        sha256="19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571",
        max_bytes=3_600_000_000,
        n_images=17736,
        image_size=256,
        # From the Galaxy10 DECaLS README; astroNN 1.1.0's lookup wrongly names class 3 "Smooth, Cigar shaped".
        class_names=(
            "Disturbed",
            "Merging",
            "Round Smooth",
            "In-between Round Smooth",
            "Cigar Shaped Smooth",
            "Barred Spiral",
            "Unbarred Tight Spiral",
            "Unbarred Loose Spiral",
            "Edge-on without Bulge",
            "Edge-on with Bulge",
        ),
    ),
    "galaxy10_sdss": DatasetSpec(
        name="galaxy10_sdss",
        file_name="Galaxy10.h5",
        urls=(
            "https://zenodo.org/records/10844811/files/Galaxy10.h5",
            "https://www.astro.utoronto.ca/~bovy/Galaxy10/Galaxy10.h5",
        ),
        sha256="969a6b1cefcc36e09fffa86febd2f699a4aa19b837ba0427f01b0bc6ded458af",
        max_bytes=340_000_000,
        n_images=21785,
        image_size=69,
        class_names=(
            "Disk, Face-on, No Spiral",
            "Smooth, Completely round",
            "Smooth, in-between round",
            "Smooth, Cigar shaped",
            "Disk, Edge-on, Rounded Bulge",
            "Disk, Edge-on, Boxy Bulge",
            "Disk, Edge-on, No Bulge",
            "Disk, Face-on, Tight Spiral",
            "Disk, Face-on, Medium Spiral",
            "Disk, Face-on, Loose Spiral",
        ),
    ),
}


def default_cache_dir() -> Path:
    """$GALAXY_CLASS_CACHE, else astroNN's dataset folder, so astroNN users don't download twice."""
    # Same as astroNN.config.astroNN_CACHE_DIR / "datasets", without importing astroNN (and TensorFlow).
    return Path(os.environ.get("GALAXY_CLASS_CACHE") or Path.home() / ".astroNN" / "datasets")


_verified: set[Path] = set()  # cached files whose checksum this process has already checked


def download(name: str, cache_dir: Path | None = None) -> Path:
    """Path of data set `name` in the cache folder; downloaded first unless a copy with the right checksum is there.

    Each of the data set's URLs is tried in turn until one gives the whole file with the right checksum.
    """
    if name not in DATASETS:
        raise GalaxyClassError(f"{name}: not a downloadable data set ({', '.join(DATASETS)})")
    spec = DATASETS[name]
    path = Path(cache_dir or default_cache_dir()) / spec.file_name
    if path in _verified or (path.is_file() and _sha256(path) == spec.sha256):
        _verified.add(path)
        return path
    _remove_stale_parts(path)
    failures = []
    for url in spec.urls:
        # Written under a temporary name and renamed only once complete and checked: a failed
        # download never leaves a file that looks like the data set (or replaces a copy already there).
        tmp = _temporary_file(path)
        try:
            with open(tmp, "wb") as out:
                failure = _fetch_checked(url, out, spec)
            if failure is None:
                os.replace(tmp, path)
                _verified.add(path)
                return path
        finally:
            tmp.unlink(missing_ok=True)
        failures.append(f"{url} ({failure})")
    raise GalaxyClassError(
        f"{path}: could not download {name}; tried {'; '.join(failures)}. "
        f"Fetch one of these URLs yourself and put the file at {path} (SHA-256 {spec.sha256})"
    )


def _temporary_file(path: Path) -> Path:
    """A new empty file beside `path` for a download in progress."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as err:
        raise GalaxyClassError(
            f"{path.parent}: cannot write the download there ({err}); choose another folder with GALAXY_CLASS_CACHE"
        ) from err
    os.close(fd)
    return Path(tmp)


def _remove_stale_parts(path: Path) -> None:
    """Remove the part files of downloads of `path` that were killed: files named as _temporary_file names
    them (mkstemp's 8 random characters), ours, and untouched for STALE_PART_S."""
    ours = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.part")
    try:
        names = [name for name in os.listdir(path.parent) if ours.fullmatch(name)]
    except OSError:  # no cache folder yet, or one we cannot list: nothing of ours to remove
        return
    now = time.time()
    for name in names:
        part = path.parent / name
        try:
            info = part.lstat()  # a link is never followed, nor removed
            mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
            if stat.S_ISREG(info.st_mode) and mine and now - info.st_mtime > STALE_PART_S:
                part.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: the download goes on regardless
            pass


class _Refused(Exception):
    """A host's answer that cannot be the file; the next host is tried."""


def _fetch_checked(url: str, out, spec: DatasetSpec) -> str | None:
    """Stream `url` into `out`; None if it gave the whole file with the right checksum, else why not."""
    try:
        short, digest = _fetch(url, out, spec)
    except _Refused as err:
        return str(err)
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} {err.reason}"
    except (OSError, http.client.HTTPException) as err:
        # URLError wraps the socket error (refused, unknown host, timed out) in .reason.
        reason = getattr(err, "reason", err)
        return str(reason) or type(reason).__name__
    except ValueError as err:  # http.client on a malformed chunked body
        return f"sent a malformed response ({err})"
    if short is not None:
        return f"cut off after {short[0]:,} of {short[1]:,} bytes"
    if digest != spec.sha256:
        return f"served a file with SHA-256 {digest}, not the expected one"
    return None


def _fetch(url: str, out, spec: DatasetSpec) -> tuple[tuple[int, int] | None, str]:
    """Stream `url` into `out` with a progress bar; return ((got, expected) if cut short else None, sha256).

    _Refused for a malformed Content-Length, or for more bytes than the file can have (spec.max_bytes).
    """
    digest = hashlib.sha256()
    got = 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        expected = _content_length(response.headers.get("Content-Length"))
        if expected is not None and expected > spec.max_bytes:
            raise _Refused(f"announced {expected:,} bytes, more than the file's at most {spec.max_bytes:,}")
        with tqdm(total=expected, unit="B", unit_scale=True, desc=spec.file_name) as bar:
            # read(n) returns b"" when the server closes early, without an error: the length check catches it.
            while block := response.read(1 << 20):
                got += len(block)
                if got > spec.max_bytes:  # a response without a length could otherwise go on forever
                    raise _Refused(f"sent more than the file's at most {spec.max_bytes:,} bytes; cut off there")
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    short = (got, expected) if expected is not None and got != expected else None
    return short, digest.hexdigest()


def _content_length(value: str | None) -> int | None:
    """A Content-Length header as a number of bytes (None if absent); _Refused if it is not one."""
    if value is None or not value.strip():
        return None
    if not re.fullmatch(r"[0-9]+", value.strip()):
        raise _Refused(f"sent a malformed Content-Length {value[:40]!r}")
    return int(value) or None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
