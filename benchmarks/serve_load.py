"""The web page under load: requests/s, latency percentiles and the server's memory at 1, 4 and 16 clients.

    python benchmarks/serve_load.py RUN_DIR [--clients 1 4 16] [--seconds 15] [--uploads galaxy 24mp-jpeg ...]

Starts `python -m galaxy_class serve RUN_DIR` on 127.0.0.1 in a subprocess and, for each kind of upload and
each number of clients, has that many threads post the upload to /api/classify back to back for a fixed
time while one more thread asks /api/info every 0.2 s. Prints one table row each: answers by status,
requests/s, latency p50/p95 of the uploads and of /api/info, and the server's resident memory (VmRSS from
/proc/PID/status, Linux) before, at its peak and 5 s after. Uploads: `galaxy`, a bundled SDSS galaxy
as a 423 px JPEG like a raw survey cutout; `24mp-jpeg`, that galaxy enlarged to 4899x4899 (24 MP, about
0.4 MB); `16mp-png` and `25mp-png`, 4096x4096 and 5000x5000 PNGs of one colour (57 and 82 kB). Traffic
goes to 127.0.0.1 only.
"""

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from galaxy_class.data import open_galaxy10, read_images

ROOT = Path(__file__).resolve().parents[1]


def uploads():
    """(file name, bytes) of each kind of upload, made from the first galaxy of the bundled sample."""
    galaxy = Image.fromarray(read_images(open_galaxy10("sample"), [0])[0])

    def encode(image, kind, **options):
        buffer = io.BytesIO()
        image.save(buffer, format=kind, **options)
        return buffer.getvalue()

    def enlarged(side):
        return galaxy.resize((side, side), Image.Resampling.BICUBIC)

    return {"galaxy": ("galaxy.jpeg", encode(enlarged(423), "JPEG", quality=90)),
            "24mp-jpeg": ("big.jpeg", encode(enlarged(4899), "JPEG", quality=75)),
            "16mp-png": ("flat16.png", encode(Image.new("RGB", (4096, 4096), (20, 20, 30)), "PNG")),
            "25mp-png": ("flat25.png", encode(Image.new("RGB", (5000, 5000), (20, 20, 30)), "PNG"))}


def multipart(name, data):
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def request(port, method, path, body=None, headers=None, timeout=120):
    """(status, seconds) of one request on a new connection."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    except OSError as e:
        return type(e).__name__, time.perf_counter() - start
    finally:
        connection.close()


def percentile(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def load(port, pid, upload, clients, seconds):
    """One row of the table: `clients` threads posting `upload` for `seconds`, /api/info asked alongside."""
    body, content_type = multipart(*upload)
    headers = {"Content-Type": content_type}
    results, info_times, peak = [], [], [rss_mib(pid)]
    before = peak[0]
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def client():
        while time.monotonic() < deadline:
            outcome = request(port, "POST", "/api/classify", body, headers)
            with lock:
                results.append(outcome)

    def watch():
        while time.monotonic() < deadline:
            info_times.append(request(port, "GET", "/api/info")[1])
            peak.append(rss_mib(pid))
            time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(clients)] + [threading.Thread(target=watch)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    time.sleep(5)
    statuses = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    times = [t for status, t in results if status == 200] or [t for _, t in results]
    return {"answers": ", ".join(f"{n}x{s}" for s, n in sorted(statuses.items(), key=str)),
            "rps": len(results) / elapsed, "p50": percentile(times, 50), "p95": percentile(times, 95),
            "info_p50": percentile(info_times, 50), "info_p95": percentile(info_times, 95),
            "rss_before": before, "rss_peak": max(peak), "rss_after": rss_mib(pid)}


def start_server(run_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "galaxy_class", "serve", str(run_dir.resolve()), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    for _ in range(600):
        if server.poll() is not None:
            sys.exit(f"error: the server exited ({server.returncode}); run `python -m galaxy_class serve {run_dir}`")
        if request(port, "GET", "/api/info", timeout=2)[0] == 200:
            return server, port
        time.sleep(0.2)
    server.kill()
    sys.exit("error: the server did not answer within 2 minutes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=15)
    kinds = ["galaxy", "24mp-jpeg", "16mp-png", "25mp-png"]
    parser.add_argument("--uploads", nargs="+", default=kinds, choices=kinds)
    args = parser.parse_args()
    files = uploads()
    server, port = start_server(args.run_dir)
    try:
        rows = []
        print(f"server pid {server.pid} on 127.0.0.1:{port}, {args.seconds:g} s per row, "
              f"idle RSS {rss_mib(server.pid):.0f} MiB\n")
        print("| upload | clients | answers | requests/s | p50 s | p95 s | /api/info p50 / p95 ms "
              "| RSS before / peak / 5 s after, MiB |")
        print("|---|---:|---|---:|---:|---:|---|---|")
        for kind in args.uploads:
            name, data = files[kind]
            for clients in args.clients:
                r = load(port, server.pid, (name, data), clients, args.seconds)
                rows.append({"upload": kind, "bytes": len(data), "clients": clients, **r})
                print(f"| {kind} ({len(data) / 1024:.0f} kB) | {clients} | {r['answers']} | {r['rps']:.2f} "
                      f"| {r['p50']:.2f} | {r['p95']:.2f} | {1000 * r['info_p50']:.0f} / {1000 * r['info_p95']:.0f} "
                      f"| {r['rss_before']:.0f} / {r['rss_peak']:.0f} / {r['rss_after']:.0f} |", flush=True)
        print("\n" + json.dumps(rows))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
