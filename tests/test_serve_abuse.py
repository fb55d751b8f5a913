"""The web page against a hostile visitor, served as `serve` serves it (waitress, in its own process) on 127.0.0.1.

Every loop here is bounded in count and time; all traffic goes to 127.0.0.1 and the server stops with the module.
"""

import http.client
import io
import json
import math
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.serve import bind, create_app
from galaxy_class.uploads import MAX_JPEG_PIXELS, MAX_PIXELS
from galaxy_class.server import THREADS

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from Linux's /proc")
IDLE_TIMEOUT = 2  # seconds; `serve` uses 30, a test cannot wait that long
LAUNCH = """
import sys
from galaxy_class.serve import bind, create_app
server = bind(create_app(sys.argv[1]), "127.0.0.1", 0, timeout=float(sys.argv[2]))
print(server.port, flush=True)
server.run()
"""


class Server:
    """The page for a run in a child process, its port and its memory as the kernel counts it."""

    def __init__(self, run_dir):
        self.process = subprocess.Popen([sys.executable, "-c", LAUNCH, str(run_dir), str(IDLE_TIMEOUT)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert line and line[0].strip().isdigit(), f"the server did not start (exit code {self.process.poll()})"
        self.port = int(line[0])

    def status(self, field):
        """A number from /proc/PID/status: VmRSS in MiB, Threads as a count."""
        for row in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if row.startswith(field + ":"):
                value = int(row.split()[1])
                return value / 1024 if field == "VmRSS" else value
        raise KeyError(field)

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, headers, parsed JSON or None) of one request on a fresh connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            is_json = response.getheader("Content-Type", "").startswith("application/json")
            return response.status, response, json.loads(data) if is_json else None
        finally:
            connection.close()

    def upload(self, data, name="galaxy.png", headers=None, **kwargs):
        body, content_type = multipart(name, data)
        return self.request("POST", "/api/classify", body, {"Content-Type": content_type, **(headers or {})}, **kwargs)


def multipart(name, data, boundary="galaxyboundary"):
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def encode(image, kind, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def png_with_ztxt(expanded_bytes):
    """A small valid PNG carrying a zTXt chunk that inflates to `expanded_bytes`."""
    png = encode(Image.new("RGB", (8, 8)), "PNG")
    data = b"Comment\0\0" + zlib.compress(b"\0" * expanded_bytes, 9)
    chunk = struct.pack(">I", len(data)) + b"zTXt" + data + struct.pack(">I", zlib.crc32(b"zTXt" + data))
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


@pytest.fixture(scope="module")
def server(tiny_run):
    running = Server(tiny_run)
    yield running
    running.process.terminate()
    running.process.wait(timeout=30)


@pytest.fixture(scope="module")
def galaxy(sample_file):
    """A bundled SDSS galaxy as an RGB image."""
    return Image.fromarray(read_images(open_galaxy10(sample_file), [0])[0])


def test_many_large_pixel_uploads_at_once_keep_memory_and_threads_bounded(server, galaxy):
    side = int(MAX_JPEG_PIXELS ** 0.5) - 100  # a 24 MP photo: decoded at reduced scale
    photo = encode(galaxy.resize((side, side), Image.Resampling.BICUBIC), "JPEG", quality=75)
    edge = math.isqrt(MAX_PIXELS)
    flat = encode(Image.new("RGB", (edge, edge), (20, 20, 30)), "PNG")  # the largest PNG decoded, in 57 kB
    bomb = encode(Image.new("L", (5000, 5000)), "PNG")  # 25 MP in 24 kB: refused unread
    assert server.upload(photo, "photo.jpeg")[0] == server.upload(flat)[0] == 200
    idle_rss, idle_threads = server.status("VmRSS"), server.status("Threads")

    answers, peak = [], [idle_rss, idle_threads]
    done = threading.Event()

    def client(i):
        for data in [photo, bomb, flat if i % 2 else photo]:
            answers.append(server.upload(data, "f.jpeg" if data is photo else "f.png")[0])

    def watch():
        while not done.wait(0.05):
            peak[:] = max(peak[0], server.status("VmRSS")), max(peak[1], server.status("Threads"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=60)
    done.set()
    watcher.join()
    assert sorted(answers) == [200] * 32 + [400] * 16
    # Before the limits, 16 such clients took the server from 1.06 to 4.0 GiB and it stayed at 2.1 GiB.
    assert peak[0] - idle_rss < 512, f"RSS rose from {idle_rss:.0f} to {peak[0]:.0f} MiB"
    assert peak[1] <= idle_threads + 1, f"threads went from {idle_threads} to {peak[1]}"
    for _ in range(50):
        after = server.status("VmRSS")
        if after < idle_rss + 64:
            break
        time.sleep(0.1)
    assert after < idle_rss + 64, f"RSS stayed at {after:.0f} MiB, idle {idle_rss:.0f}"


def test_slow_clients_hold_no_thread_and_silent_ones_are_disconnected(server, galaxy):
    deadline = time.monotonic() + 20
    slow = []
    for _ in range(2 * THREADS):  # more than the server has threads
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n".encode())
        slow.append(s)
    stop = threading.Event()

    def trickle():  # a byte per connection every half second, well within the idle timeout
        while not stop.wait(0.5) and time.monotonic() < deadline:
            for s in slow:
                s.sendall(b"-")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=IDLE_TIMEOUT + 6)
        time.sleep(1)
        start = time.monotonic()
        status, _, result = server.upload(encode(galaxy, "PNG"), timeout=10)
        assert status == 200 and result["class"] and time.monotonic() - start < 5
        assert silent.recv(1) == b"", "the server closes a connection that sends nothing"
        silent.close()
    finally:
        stop.set()
        trickler.join()
        for s in slow:
            s.close()


def test_a_request_for_another_host_name_is_refused(server):
    status, _, result = server.request("GET", "/api/info", headers={"Host": f"evil.example:{server.port}"})
    assert status == 400 and "Host" in result["error"] and "evil.example" in result["error"]
    for name in ("127.0.0.1", "localhost"):
        assert server.request("GET", "/api/info", headers={"Host": f"{name}:{server.port}"})[0] == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1"])
def test_a_post_from_another_site_is_refused_and_one_from_the_page_served(server, galaxy, origin):
    status, _, result = server.upload(encode(galaxy, "PNG"), headers={"Origin": origin})
    assert status == 403 and "another site" in result["error"]
    own = server.upload(encode(galaxy, "PNG"), headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert own[0] == 200


def test_a_ztxt_bomb_is_a_clear_400(server):
    status, _, result = server.upload(png_with_ztxt(50_000_000), "bomb.png")
    assert status == 400 and "bomb.png" in result["error"] and "too large" in result["error"]


def test_every_refusal_is_json_with_its_status(server):
    status, response, result = server.request("DELETE", "/api/classify")
    assert status == 405 and set(response.getheader("Allow").split(", ")) >= {"POST"} and result["error"]
    status, _, result = server.request("GET", "/api/info?" + "a" * 10_000)
    assert status == 414 and result["error"]
    status, _, result = server.request("GET", "/api/info", headers={"X-Padding": "a" * 100_000})
    assert status == 431 and "headers" in result["error"]
    status, _, result = server.request("POST", "/api/classify", body=b"", headers={"Content-Length": str(2**30)})
    assert status == 413 and "larger than 10 MB" in result["error"]
    status, _, result = server.request("GET", "/nothing/here")
    assert status == 404 and result["error"]
    status, _, result = server.upload(encode(Image.new("L", (20000, 10000)), "PNG"), "huge.png")  # over PIL's own limit
    assert status == 400 and "huge.png: too large" in result["error"]


def test_a_form_of_many_parts_or_with_a_long_text_field_is_refused_for_what_it_is(server, galaxy):
    upload, content_type = multipart("galaxy.png", encode(galaxy, "PNG"))

    def field(name, value):
        return f'--galaxyboundary\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()

    many = b"".join(field(f"f{i}", "x") for i in range(2000))
    status, _, result = server.request("POST", "/api/classify", many + upload, {"Content-Type": content_type})
    assert status == 413 and result["error"].startswith("the form has more than 16 parts"), result
    status, _, result = server.request("POST", "/api/classify", field("crop_fraction", "5" * 600_000) + upload,
                                       {"Content-Type": content_type})
    assert status == 413 and result["error"].startswith("a text field of the form is longer than 500 kB"), result
    status, _, result = server.request("POST", "/api/classify", field("crop_fraction", "0.5") + upload,
                                       {"Content-Type": content_type})
    assert status == 200 and "central 0.5" in result["preprocessing"]


def test_a_large_upload_and_its_answer_never_touch_a_temporary_file(tiny_run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the server wrote a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    noise = np.random.default_rng(0).integers(0, 256, (1800, 1800, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    assert 9 * 2**20 < len(data) < 10 * 2**20
    server = bind(create_app(tiny_run), "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        body, content_type = multipart("noise.png", data)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("POST", "/api/classify", body, {"Content-Type": content_type})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["name"] == "noise.png"
        connection.close()
    finally:
        server.stop()
        thread.join(timeout=10)
