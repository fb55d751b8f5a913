"""Specification of galaxy_class.download: hosts tried in turn, checksums, the cache folder, nothing partial kept."""

import dataclasses
import hashlib
import http.server
import os
import socket
import threading

import h5py
import numpy as np
import pytest

import galaxy_class.download as download_module
from galaxy_class import GalaxyClassError
from galaxy_class.data import open_galaxy10, resolve_source
from galaxy_class.download import DATASETS, default_cache_dir, download

BODY = os.urandom(300_000)  # stands in for Galaxy10.h5: the tests give galaxy10_sdss its checksum


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server: routes maps a URL path to (status, bytes sent or a function yielding blocks of
    them, Content-Length declared or None for no such header)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    routes = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, body, declared = routes[self.path]
            self.send_response(status)
            if declared is not None:
                self.send_header("Content-Length", str(declared))
            self.end_headers()
            try:
                for block in [body] if isinstance(body, bytes) else body():
                    self.wfile.write(block)  # then the connection closes, early if declared > len(body)
            except ConnectionError:  # the client stopped reading
                pass

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()  # quick shutdown
    yield routes, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def serve(routes, base, path, body=BODY, status=200, declared=None):
    """Have the server answer `path` with `body` and return its URL."""
    routes[path] = (status, body, len(body) if declared is None else declared)
    return base + path


def hosts(monkeypatch, *urls, body=BODY):
    """galaxy10_sdss hosted at `urls` (tried in that order), with the checksum of `body`."""
    spec = dataclasses.replace(DATASETS["galaxy10_sdss"], urls=urls, sha256=hashlib.sha256(body).hexdigest(),
                               max_bytes=len(body))
    monkeypatch.setitem(DATASETS, "galaxy10_sdss", spec)
    return spec


def refused_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/Galaxy10.h5"


def test_each_data_set_is_fetched_from_zenodo_first_then_toronto():
    for spec in DATASETS.values():
        assert [url.split("/")[2] for url in spec.urls] == ["zenodo.org", "www.astro.utoronto.ca"]
        assert all(url.endswith("/" + spec.file_name) for url in spec.urls)
    assert DATASETS["galaxy10_decals"].urls[0] == "https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5"
    assert DATASETS["galaxy10_sdss"].urls[0] == "https://zenodo.org/records/10844811/files/Galaxy10.h5"


def test_download_saves_the_file_once_its_checksum_matches(server, monkeypatch, tmp_path):
    hosts(monkeypatch, serve(*server, "/Galaxy10.h5"))
    path = download("galaxy10_sdss", tmp_path / "cache")
    assert path == tmp_path / "cache" / "Galaxy10.h5"
    assert path.read_bytes() == BODY
    assert os.listdir(tmp_path / "cache") == ["Galaxy10.h5"]


def test_a_host_that_is_down_is_passed_over_for_the_next(server, monkeypatch, tmp_path):
    hosts(monkeypatch, refused_url(), serve(*server, "/mirror/Galaxy10.h5"))
    assert download("galaxy10_sdss", tmp_path).read_bytes() == BODY
    assert os.listdir(tmp_path) == ["Galaxy10.h5"]


@pytest.mark.parametrize(
    "first",
    [
        dict(body=BODY[:-1] + b"!"),
        dict(body=BODY[:100_000], declared=len(BODY)),
        dict(body=b"gone", status=404),
    ],
    ids=["wrong bytes", "cut off", "HTTP error"],
)
def test_a_host_that_serves_a_bad_file_is_passed_over_for_the_next(first, server, monkeypatch, tmp_path):
    hosts(monkeypatch, serve(*server, "/first/Galaxy10.h5", **first), serve(*server, "/second/Galaxy10.h5"))
    assert download("galaxy10_sdss", tmp_path).read_bytes() == BODY
    assert os.listdir(tmp_path) == ["Galaxy10.h5"]


def test_when_every_host_fails_one_line_gives_each_url_its_reason_and_keeps_nothing(server, monkeypatch, tmp_path):
    routes, base = server
    down = refused_url()
    wrong = serve(routes, base, "/wrong/Galaxy10.h5", body=BODY[:-1] + b"!")
    cut = serve(routes, base, "/cut/Galaxy10.h5", body=BODY[:100_000], declared=len(BODY))
    missing = serve(routes, base, "/missing/Galaxy10.h5", body=b"", status=404)
    spec = hosts(monkeypatch, down, wrong, cut, missing)
    target = tmp_path / "cache" / "Galaxy10.h5"
    with pytest.raises(GalaxyClassError) as error:
        download("galaxy10_sdss", tmp_path / "cache")
    message = str(error.value)
    assert message.startswith(f"{target}: could not download galaxy10_sdss; tried ")
    assert f"{down} (" in message and "Connection refused" in message
    wrong_digest = hashlib.sha256(BODY[:-1] + b"!").hexdigest()
    assert f"{wrong} (served a file with SHA-256 {wrong_digest}, not the expected one)" in message
    assert f"{cut} (cut off after 100,000 of 300,000 bytes)" in message
    assert f"{missing} (HTTP 404 Not Found)" in message
    assert f"put the file at {target} (SHA-256 {spec.sha256})" in message
    assert "\n" not in message
    assert os.listdir(tmp_path / "cache") == []


def test_a_malformed_content_length_passes_the_host_over_for_the_next(server, monkeypatch, tmp_path):
    hosts(monkeypatch, serve(*server, "/first/Galaxy10.h5", declared="12abc"), serve(*server, "/second/Galaxy10.h5"))
    assert download("galaxy10_sdss", tmp_path).read_bytes() == BODY
    assert os.listdir(tmp_path) == ["Galaxy10.h5"]


def test_an_endless_response_is_cut_off_at_the_files_size_and_the_next_host_tried(server, monkeypatch, tmp_path):
    routes, base = server
    sent = []

    def endless():  # 128 MB at most, in 64 kB blocks, without a Content-Length
        for _ in range(2048):
            yield b"\0" * 65536
            sent.append(65536)

    routes["/endless/Galaxy10.h5"] = (200, endless, None)
    hosts(monkeypatch, base + "/endless/Galaxy10.h5", serve(routes, base, "/second/Galaxy10.h5"))
    assert download("galaxy10_sdss", tmp_path).read_bytes() == BODY
    assert os.listdir(tmp_path) == ["Galaxy10.h5"]
    assert sum(sent) < 32 * 2**20, f"the endless host sent {sum(sent):,} bytes before it was cut off"


def test_when_every_host_sends_no_file_one_error_says_why_for_each(server, monkeypatch, tmp_path):
    routes, base = server
    routes["/endless/Galaxy10.h5"] = (200, lambda: (BODY for _ in range(100)), None)
    malformed = serve(routes, base, "/malformed/Galaxy10.h5", declared="12abc")
    announced = serve(routes, base, "/announced/Galaxy10.h5", body=BODY + b"!")
    spec = hosts(monkeypatch, malformed, base + "/endless/Galaxy10.h5", announced)
    with pytest.raises(GalaxyClassError) as error:
        download("galaxy10_sdss", tmp_path)
    message = str(error.value)
    assert f"{malformed} (sent a malformed Content-Length '12abc')" in message
    assert f"{base}/endless/Galaxy10.h5 (sent more than the file's at most 300,000 bytes; cut off there)" in message
    assert f"{announced} (announced 300,001 bytes, more than the file's at most 300,000)" in message
    assert "\n" not in message and spec.max_bytes == len(BODY)
    assert os.listdir(tmp_path) == []


def test_each_size_cap_is_above_the_files_pixels_uncompressed():
    for spec in DATASETS.values():
        pixels = spec.n_images * spec.image_size**2 * 3
        assert pixels < spec.max_bytes < 1.1 * pixels, spec.name


def test_part_files_of_killed_downloads_are_removed_and_nothing_else(server, monkeypatch, tmp_path):
    hosts(monkeypatch, serve(*server, "/Galaxy10.h5"))
    users = tmp_path / "users_file"
    users.write_bytes(b"keep me")
    old = os.path.getmtime(users) - 2 * 24 * 3600
    names = {".Galaxy10.h5.k2j_4h5g.part": old,  # a killed download's: removed
             ".Galaxy10.h5.abcd1234.part": None,  # a download in progress (written just now): kept
             ".Galaxy10.h5.notes.part": old, "Galaxy10.h5.abcd1234.part": old,  # not named as ours: kept
             ".Galaxy10.h5.abcd1234.part.bak": old, ".Galaxy10_DECals.h5.abcd1234.part": old}
    cache = tmp_path / "cache"
    cache.mkdir()
    for name, mtime in names.items():
        (cache / name).write_bytes(b"part")
        if mtime:
            os.utime(cache / name, (mtime, mtime))
    (cache / ".Galaxy10.h5.linktous.part").symlink_to(users)  # named as ours, but a link: kept, as is its target
    os.utime(cache / ".Galaxy10.h5.linktous.part", (old, old), follow_symlinks=False)
    assert download("galaxy10_sdss", cache).read_bytes() == BODY
    assert sorted(os.listdir(cache)) == sorted(["Galaxy10.h5", ".Galaxy10.h5.linktous.part",
                           *[name for name in names if name != ".Galaxy10.h5.k2j_4h5g.part"]])
    assert users.read_bytes() == b"keep me"


def test_a_silent_host_times_out_and_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(download_module, "TIMEOUT_S", 0.3)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/Galaxy10.h5"
        hosts(monkeypatch, url)
        with pytest.raises(GalaxyClassError, match=f"tried {url} \\(timed out\\)"):
            download("galaxy10_sdss", tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_copy_in_astronn_cache_is_used_without_downloading(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("GALAXY_CLASS_CACHE", raising=False)
    hosts(monkeypatch, refused_url())
    cached = tmp_path / ".astroNN" / "datasets" / "Galaxy10.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(BODY)
    assert download("galaxy10_sdss") == cached
    assert resolve_source("galaxy10_sdss") == cached
    monkeypatch.setenv("GALAXY_CLASS_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"


def test_a_corrupt_cached_copy_is_replaced_by_a_good_download(server, monkeypatch, tmp_path):
    hosts(monkeypatch, serve(*server, "/Galaxy10.h5"))
    cached = tmp_path / "Galaxy10.h5"
    cached.write_bytes(BODY[:1000])
    assert download("galaxy10_sdss", tmp_path) == cached
    assert cached.read_bytes() == BODY


def test_a_failed_download_leaves_a_corrupt_cached_copy_as_it_was(monkeypatch, tmp_path):
    hosts(monkeypatch, refused_url())
    cached = tmp_path / "Galaxy10.h5"
    cached.write_bytes(BODY[:1000])
    with pytest.raises(GalaxyClassError, match="could not download"):
        download("galaxy10_sdss", tmp_path)
    assert os.listdir(tmp_path) == ["Galaxy10.h5"] and cached.read_bytes() == BODY[:1000]


def test_downloaded_galaxy10_file_opens_with_its_class_names(tmp_path, monkeypatch):
    path = tmp_path / "Galaxy10.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((10, 69, 69, 3), np.uint8))
        f.create_dataset("ans", data=np.arange(10))
    spec = hosts(monkeypatch, refused_url(), body=path.read_bytes())
    g = open_galaxy10("galaxy10_sdss", cache_dir=tmp_path)
    assert (g.path, g.source, g.class_names) == (path, "galaxy10_sdss", spec.class_names)


def test_unknown_data_set_name_lists_the_downloadable_ones(tmp_path):
    with pytest.raises(GalaxyClassError, match="galaxy10: not a downloadable data set .galaxy10_decals, galaxy10_sdss."):
        download("galaxy10", tmp_path)
