"""`python -m galaxy_class serve RUN_DIR`: a local web page that classifies a galaxy image and shows its Grad-CAM.

Flask serves one static page (static/) and a small JSON API; uploads are decoded in memory, never saved.
"""

import base64
import io
import json
import socket
import threading
from pathlib import Path

import numpy as np
from flask import Flask, Request, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.serving import make_server

from galaxy_class.data import open_galaxy10, read_images
from galaxy_class import cutout
from galaxy_class.images import read_rgb, run_recipe
from galaxy_class.errors import GalaxyClassError
from galaxy_class.evaluate import predict_proba
from galaxy_class.gradcam import gradcam, overlay
from galaxy_class.train import load_run

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Far above any survey cutout; a small file that claims more pixels (a "decompression bomb") is refused unread.
MAX_PIXELS = 25_000_000
FORMATS = ("PNG", "JPEG")
SAMPLES_PER_CLASS = 2


class InMemoryRequest(Request):
    """Uploaded files stay in memory (their size is capped) instead of going to a temporary file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


class Classifier:
    """A trained run and the bundled sample galaxies; one request uses the model at a time."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.model, self.config, _ = load_run(run_dir)
        self.input_shape = tuple(self.config.input_shape)
        self.recipe = run_recipe(self.config)
        self.samples = _sample_galaxies()
        self._lock = threading.Lock()
        # The first call traces the model: pay for it now rather than on the first visitor's upload.
        self.classify(np.zeros(self.input_shape, np.uint8))

    def info(self):
        metrics = {}
        try:
            metrics = json.loads((self.run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            pass
        return {"run": self.run_dir.name, "model": self.config.model, "class_names": list(self.config.class_names),
                "test_accuracy": metrics.get("accuracy"), "test_images": metrics.get("n"),
                "max_upload_bytes": MAX_UPLOAD_BYTES, "formats": list(FORMATS),
                "stored_size": self.input_shape[0], "cutout": self.recipe.to_dict() if self.recipe else None,
                "samples": [{"id": i, "label": label} for i, (_, label) in enumerate(self.samples)]}

    def classify(self, image):
        """Probabilities, the image the model saw, and one Grad-CAM overlay per class, for a uint8 (H, W, 3) image."""
        k = len(self.config.class_names)
        with self._lock:
            probs = predict_proba(self.model, image[None])[0]
            heatmaps = gradcam(self.model, np.repeat(image[None], k, axis=0), class_index=np.arange(k))
        top = int(probs.argmax())
        return {"class": self.config.class_names[top], "class_index": top, "probability": float(probs[top]),
                "probabilities": [{"class": name, "probability": float(p)}
                                  for name, p in zip(self.config.class_names, probs)],
                "image": _data_url(image), "overlays": [_data_url(overlay(image, h)) for h in heatmaps]}

    def sample(self, i):
        if not 0 <= i < len(self.samples):
            raise NotFound(f"no sample galaxy {i}")
        return self.samples[i]


def decode_upload(data, name, stored_size, recipe=None, crop_fraction=None):
    """An uploaded file's bytes as the model's uint8 input and a note on how it was cut; GalaxyClassError (for
    the page) if it is no usable image."""
    if not data:
        raise GalaxyClassError(f"{name}: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError:
        raise GalaxyClassError(f"{name}: too large (more than {MAX_PIXELS:,} pixels)") from None
    except (OSError, ValueError):
        raise GalaxyClassError(f"{name}: not an image; upload a {' or '.join(FORMATS)} file") from None
    if kind not in FORMATS:
        raise GalaxyClassError(f"{name}: is a {kind} image; upload a {' or '.join(FORMATS)} file")
    if width * height > MAX_PIXELS:
        raise GalaxyClassError(f"{name}: {width}x{height} pixels is too large (at most {MAX_PIXELS:,} pixels)")
    try:
        image = read_rgb(io.BytesIO(data), name)
    except GalaxyClassError:
        raise GalaxyClassError(f"{name}: the {kind} file is damaged or truncated") from None
    return cutout.apply(image, stored_size, recipe, crop_fraction)


def create_app(run_dir):
    """The Flask app serving the page and the API for the trained run in `run_dir`."""
    classifier = Classifier(run_dir)
    app = Flask(__name__, static_folder="static")
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.extensions["galaxy_class"] = classifier

    @app.get("/")
    def index():
        return app.send_static_file("index.html")

    @app.get("/api/info")
    def info():
        return jsonify(classifier.info())

    @app.post("/api/classify")
    def classify_upload():
        upload = request.files.get("image")
        if upload is None:
            return _error("no file was sent (form field 'image')", 400)
        name = Path(upload.filename or "upload").name
        try:
            crop_fraction = _crop_fraction(request.form.get("crop_fraction"))
            image, note = decode_upload(upload.read(), name, classifier.input_shape[0], classifier.recipe,
                                        crop_fraction)
        except GalaxyClassError as e:
            return _error(str(e), 400)
        return jsonify({"name": name, "preprocessing": note, **classifier.classify(image)})

    @app.get("/samples/<int:i>.png")
    def sample_image(i):
        png, _ = classifier.sample(i)
        return app.response_class(png, mimetype="image/png")

    @app.get("/api/samples/<int:i>")
    def classify_sample(i):
        png, label = classifier.sample(i)
        image, note = decode_upload(png, f"sample {i}", classifier.input_shape[0], classifier.recipe)
        return jsonify({"name": f"sample galaxy {i}", "label": label, "preprocessing": note,
                        **classifier.classify(image)})

    @app.errorhandler(HTTPException)
    def http_error(e):
        if e.code == 413:
            return _error(f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MB", 413)
        return _error(e.description, e.code)

    @app.errorhandler(Exception)
    def unexpected_error(e):
        app.logger.exception("error while handling %s", request.path)
        return _error(f"the server failed on this request ({type(e).__name__}); it keeps serving", 500)

    return app


def bind(app, host="127.0.0.1", port=8000):
    """A threaded WSGI server for `app` listening on host:port (port 0: any free one)."""
    # Bound here rather than by werkzeug, which prints its own lines and exits when the port is taken.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as e:
        raise GalaxyClassError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    with sock:
        return make_server(host, sock.getsockname()[1], app, threaded=True, fd=sock.fileno())


def serve(run_dir, host="127.0.0.1", port=8000):
    """Serve the page for `run_dir` at http://host:port/ until interrupted."""
    server = bind(create_app(run_dir), host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the page has no login; anyone who can reach {host}:{server.port} can use it")
    print(f"Serving {run_dir} at http://{host}:{server.port}/ (Ctrl+C stops)", flush=True)
    server.serve_forever()  # werkzeug's returns on Ctrl+C, after closing the socket
    print("Stopped.")


def _sample_galaxies():
    """(PNG bytes, label) of the first few galaxies of each class in the bundled sample; none if it is absent."""
    try:
        g = open_galaxy10("sample")
    except GalaxyClassError:
        return []
    indices = [i for k in range(len(g.class_names)) for i in np.flatnonzero(g.labels == k)[:SAMPLES_PER_CLASS]]
    return [(_png(image), g.class_names[g.labels[i]]) for i, image in zip(indices, read_images(g, indices))]


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(image):
    return "data:image/png;base64," + base64.b64encode(_png(image)).decode("ascii")


def _crop_fraction(value):
    """The page's crop-fraction field: empty or "auto" for the run's recipe, else a number in (0, 1]."""
    if value in (None, "", "auto"):
        return None
    return cutout.parse_crop_fraction(value)


def _error(message, code):
    return jsonify({"error": message}), code
