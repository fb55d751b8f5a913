"""`python -m galaxy_class serve RUN_DIR`: a local web page that classifies a galaxy image and shows its Grad-CAM.

Flask serves one static page (static/) and a small JSON API, behind the HTTP server of server.py; uploads are
decoded by uploads.py.
"""

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
from flask import Flask, Request, jsonify, request
from PIL import Image
from werkzeug.exceptions import (BadRequest, Forbidden, HTTPException, NotFound, RequestEntityTooLarge,
                                 RequestURITooLarge)
from werkzeug.formparser import FormDataParser

from galaxy_class.data import open_galaxy10, read_images
from galaxy_class import cutout
from galaxy_class.images import run_recipe
from galaxy_class.errors import GalaxyClassError
from galaxy_class.predict import predict_proba
from galaxy_class.gradcam import colour_bar, gradcam, overlay
from galaxy_class.server import (CONNECTION_TIMEOUT, LOOPBACK, MAX_URL_BYTES, cross_site, host_names, listen,
                                 names_this_server, url_host)
from galaxy_class.runs import load_run
from galaxy_class.uploads import FORMATS, decode_upload

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # the multipart framing and the crop-fraction field around the file
MAX_FORM_PARTS = 16  # the page sends two: the image and the crop fraction
MAX_FIELD_BYTES = 500_000  # a text field of the form (the crop fraction is a few bytes): werkzeug's default
SAMPLES_PER_CLASS = 2


class FormTooLarge(RequestEntityTooLarge):
    """A form refused for its parts or fields rather than its size; the description says which."""


class _FormParser(FormDataParser):
    """werkzeug's form parser, whose refusals say which limit the form broke (werkzeug's own say only 413)."""

    def _parse_multipart(self, stream, mimetype, content_length, options):
        counter = _DelimiterCounter(stream, options.get("boundary", "").encode("ascii", "replace"))
        try:
            _, form, files = super()._parse_multipart(counter, mimetype, content_length, options)
        except RequestEntityTooLarge:
            # werkzeug refuses a form inside its parser for one of two limits: its parts, or a field's length.
            if self.max_form_parts is not None and counter.delimiters > self.max_form_parts:
                raise FormTooLarge(f"the form has more than {self.max_form_parts} parts; send the image (field "
                                   "'image') and, if wanted, the crop fraction") from None
            raise FormTooLarge(f"a text field of the form is longer than {self.max_form_memory_size // 1000:,} kB; "
                               "the crop fraction is a number such as 0.5") from None
        return stream, form, files


class _DelimiterCounter:
    """A multipart body as werkzeug reads it, counting the part delimiters that went by."""

    def __init__(self, stream, boundary):
        self._stream, self._delimiter, self._tail, self.delimiters = stream, b"--" + boundary, b"", 0

    def read(self, size=-1):
        data = self._stream.read(size)
        seen = self._tail + data  # the tail is too short to hold a whole delimiter: none is counted twice
        self.delimiters += seen.count(self._delimiter)
        self._tail = seen[len(seen) - len(self._delimiter) + 1:]
        return data


class InMemoryRequest(Request):
    """Uploaded files stay in memory (their size is capped) instead of going to a temporary file."""

    form_data_parser_class = _FormParser

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
        self._sample_results = {}
        self._samples_lock = threading.Lock()
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
                "colour_bar": _data_url(colour_bar()),
                "samples": [{"id": i, "label": label} for i, (_, label) in enumerate(self.samples)]}

    def classify(self, image):
        """Probabilities, the image the model saw, and one Grad-CAM overlay per class (averaged over the 8 flips
        and rotations), for a uint8 (H, W, 3) image."""
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

    def sample_result(self, i):
        """The page's answer for bundled sample galaxy `i`, worked out on its first request only."""
        png, label = self.sample(i)
        with self._samples_lock:
            if i not in self._sample_results:
                image, note = decode_upload(png, f"sample {i}", self.input_shape[0], self.recipe)
                self._sample_results[i] = {"name": f"sample galaxy {i}", "label": label, "preprocessing": note,
                                           **self.classify(image)}
            return self._sample_results[i]


def create_app(run_dir, host="127.0.0.1"):
    """The Flask app serving the page and the API for the trained run in `run_dir`, to be served on `host`."""
    classifier = Classifier(run_dir)
    app = Flask(__name__, static_folder="static")
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FIELD_BYTES
    app.extensions["galaxy_class"] = classifier
    names = host_names(host)

    @app.before_request
    def refuse_strangers():
        environ = request.environ
        if len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", "")) > MAX_URL_BYTES:
            raise RequestURITooLarge(f"the address is longer than {MAX_URL_BYTES:,} bytes")
        sent = request.headers.get("Host", "")
        if not names_this_server(sent, names):
            raise BadRequest(f"the Host header {sent!r} does not name this server; open the page at the address "
                             "it listens on (DNS rebinding protection)")
        if cross_site(request):
            raise Forbidden(f"requests from another site ({request.headers['Origin']}) are refused; use the page "
                            "itself")

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
        data = upload.stream.getvalue()  # the bytes themselves, not a copy
        if len(data) > MAX_UPLOAD_BYTES:
            raise RequestEntityTooLarge()
        try:
            crop_fraction = _crop_fraction(request.form.get("crop_fraction"))
            image, note = decode_upload(data, name, classifier.input_shape[0], classifier.recipe, crop_fraction)
        except GalaxyClassError as e:
            return _error(str(e), 400)
        return jsonify({"name": name, "preprocessing": note, **classifier.classify(image)})

    @app.get("/samples/<int:i>.png")
    def sample_image(i):
        png, _ = classifier.sample(i)
        return app.response_class(png, mimetype="image/png")

    @app.get("/api/samples/<int:i>")
    def classify_sample(i):
        return jsonify(classifier.sample_result(i))

    @app.errorhandler(HTTPException)
    def http_error(e):
        if e.code < 400:  # a redirect, e.g. from // to /
            return e
        too_large = e.code == 413 and not isinstance(e, FormTooLarge)
        message = f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MB" if too_large else e.description
        response = e.get_response()  # keeps the headers an answer needs, such as Allow on a 405
        response.set_data(json.dumps({"error": message}))
        response.mimetype = "application/json"
        return response

    @app.errorhandler(Exception)
    def unexpected_error(e):
        app.logger.exception("error while handling %s", request.path)
        return _error(f"the server failed on this request ({type(e).__name__}); it keeps serving", 500)

    return app


def bind(app, host="127.0.0.1", port=8000, timeout=CONNECTION_TIMEOUT):
    """The HTTP server for `app` listening on host:port (port 0: any free one), sized for the page's uploads."""
    return listen(app, host, port, MAX_UPLOAD_BYTES, MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES, timeout)


def serve(run_dir, host="127.0.0.1", port=8000):
    """Serve the page for `run_dir` at http://host:port/ until interrupted."""
    server = bind(create_app(run_dir, host), host, port)
    if host not in LOOPBACK:
        print(f"warning: the page has no login; anyone who can reach {host}:{server.port} can use it")
    print(f"Serving {run_dir} at http://{url_host(host)}:{server.port}/ (Ctrl+C stops)", flush=True)
    server.run()
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


