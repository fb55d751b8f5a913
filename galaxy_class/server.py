"""The HTTP side of the web page: waitress with a fixed pool of threads, bounded connections and idle timeouts,
and which requests may use the page at all (Host and Origin checks against DNS rebinding and other sites).
"""

import ipaddress
import json
import socket
from urllib.parse import urlsplit

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from galaxy_class.errors import GalaxyClassError

THREADS = 4  # requests worked on at once; the model runs one at a time anyway
CONNECTIONS = 32  # open connections, each buffering at most one request (headers and body) in memory
CONNECTION_TIMEOUT = 30  # seconds a connection may stay silent, mid-request or idle, before it is closed
MAX_HEADER_BYTES = 64 * 1024
MAX_URL_BYTES = 8 * 1024
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD = frozenset({"0.0.0.0", "::", ""})


class Server:
    """Waitress serving `app` on a listening socket: a fixed pool of threads, bounded connections, idle
    connections closed; run() until stop() (from any thread) or Ctrl+C."""

    def __init__(self, app, sock, max_upload_bytes, max_body, timeout=CONNECTION_TIMEOUT):
        self.port = sock.getsockname()[1]
        pool = _QuickFirst()
        pool.set_thread_count(THREADS)
        self._server = create_server(
            app, _dispatcher=pool, sockets=[sock], connection_limit=CONNECTIONS, channel_timeout=timeout,
            cleanup_interval=1, max_request_header_size=MAX_HEADER_BYTES, max_request_body_size=max_body,
            # Buffers large enough that no request or answer is ever spilled to a temporary file.
            inbuf_overflow=max_body + 1, outbuf_overflow=64 * 2**20, ident="galaxy-class")
        self._server.channel_class = _JSONErrorChannel
        self._server.max_upload_bytes = max_upload_bytes  # for the 413 message

    def run(self):
        self._server.run()  # returns on Ctrl+C, or once stop() has closed every connection

    def stop(self):
        # Sockets are closed by the thread that polls them.
        self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._server._map))
        self._server.task_dispatcher.shutdown()


class _QuickFirst(ThreadedTaskDispatcher):
    """Waitress's pool of threads, except that requests which upload nothing (the page, its files, /api/info)
    go ahead of queued uploads: the page still opens while the model is busy."""

    def add_task(self, channel):
        with self.lock:
            if channel.requests[0].command == "POST":
                self.queue.append(channel)
            else:
                self.queue.appendleft(channel)
            self.queue_cv.notify()


class _JSONErrorTask(ErrorTask):
    """Waitress's own refusals (headers or body too large, malformed HTTP) as the JSON the page reads."""

    def execute(self):
        error = self.request.error
        messages = {413: f"the file is larger than {self.channel.server.max_upload_bytes // 2**20} MB",
                    431: f"the request's headers are larger than {MAX_HEADER_BYTES // 1024} kB"}
        body = json.dumps({"error": messages.get(error.code, f"{error.reason}: {error.body}")}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JSONErrorChannel(HTTPChannel):
    error_task_class = _JSONErrorTask


def listen(app, host, port, max_upload_bytes, max_body, timeout=CONNECTION_TIMEOUT):
    """A Server for `app` listening on host:port (port 0: any free one), taking uploads up to
    `max_upload_bytes` in request bodies up to `max_body` bytes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as e:
        raise GalaxyClassError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    return Server(app, sock, max_upload_bytes, max_body, timeout)


def host_names(host):
    """The names a request's Host header may give to reach a server listening on `host`. A website that
    rebinds its own DNS name to this machine sends its name, never one of these. "*": any IP address."""
    host = host.lower().strip("[]")
    if host in WILDCARD:
        return LOOPBACK | {socket.gethostname().lower(), socket.getfqdn().lower(), "*"}
    if host in LOOPBACK or (_ip(host) and _ip(host).is_loopback):
        return LOOPBACK | {host}
    return frozenset({host})


def names_this_server(header, names):
    """Whether a Host header ("name", "name:port", "[v6 address]:port") gives one of `names`."""
    try:
        name = urlsplit(f"//{header}").hostname
    except ValueError:
        return False
    return bool(name) and (name in names or ("*" in names and _ip(name) is not None))


def cross_site(request):
    """Whether a request that does work comes from another site's page: browsers send the page's origin in
    the Origin header (a non-browser client sends none, and could send anything)."""
    origin = request.headers.get("Origin")
    if request.method in ("GET", "HEAD", "OPTIONS") or origin is None:
        return False
    own = _origin(f"{request.scheme}://{request.headers.get('Host', '')}")
    return own is None or _origin(origin) != own


def _origin(url):
    """(scheme, host, port) of an Origin header or URL, with the default port filled in; None if malformed."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None


def _ip(name):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def url_host(host):
    return f"[{host}]" if ":" in host else host
