"""The web page: its JSON API through Flask's test client, and the whole page in headless Chromium.

`python tests/test_serve.py RUN_DIR OUT.png` takes the README's screenshot with the same browser setup.
"""

import base64
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from galaxy_class.cli import main
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class import cutout
from galaxy_class.images import load_image
from galaxy_class.serve import MAX_UPLOAD_BYTES, bind, create_app
from galaxy_class.uploads import decode_upload

# What Chromium needs on this kind of machine: no sandbox as root, no GPU, no calls home on a closed network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900"]


@pytest.fixture(scope="module")
def app(tiny_run):
    return create_app(tiny_run)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def galaxy_png(tmp_path_factory, sample_file):
    """A real galaxy from the bundled sample, written as a PNG file."""
    g = open_galaxy10(sample_file)
    path = tmp_path_factory.mktemp("upload") / "spiral.png"
    Image.fromarray(read_images(g, [int(np.flatnonzero(g.labels == 1)[0])])[0]).save(path)
    return path


def cli_predict(capsys, run, image):
    code = main(["predict", str(run), str(image), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    return json.loads(out)[0]


def post(client, data, name="galaxy.png"):
    return client.post("/api/classify", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_page_and_info_describe_the_run(client, tiny_run, tiny_config):
    page = client.get("/")
    assert page.status_code == 200 and b'id="file"' in page.data
    info = client.get("/api/info").get_json()
    assert info["run"] == tiny_run.name and info["model"] == "mobilenet"
    assert info["max_upload_bytes"] == MAX_UPLOAD_BYTES
    names = json.loads((tiny_run / "config.json").read_text())["class_names"]
    assert info["class_names"] == names
    assert [s["label"] for s in info["samples"]] == [name for name in names for _ in range(2)]
    assert client.get("/samples/0.png").data.startswith(b"\x89PNG")
    colours = Image.open(io.BytesIO(base64.b64decode(info["colour_bar"].split(",", 1)[1]))).convert("RGB")
    left, right = colours.getpixel((0, 0)), colours.getpixel((colours.width - 1, 0))
    assert left[2] > left[0] and right[0] > right[2]  # the overlay's scale: blue for no heat, red for the peak


def test_upload_gets_the_same_probabilities_as_cli_predict(client, capsys, tiny_run, galaxy_png):
    result = post(client, galaxy_png.read_bytes(), "spiral.png").get_json()
    expected = cli_predict(capsys, tiny_run, galaxy_png)
    assert result["name"] == "spiral.png" and result["class"] == expected["class"]
    shown = {entry["class"]: entry["probability"] for entry in result["probabilities"]}
    assert shown == pytest.approx(expected["probabilities"], abs=1e-6)
    assert len(result["overlays"]) == len(shown)
    assert all(url.startswith("data:image/png;base64,") for url in [result["image"], *result["overlays"]])


def test_a_raw_cutout_is_cut_by_the_runs_recipe_as_predict_does(client, capsys, tiny_run, dev_jpegs):
    jpeg = next(dev_jpegs.glob("*.jpeg"))
    result = post(client, jpeg.read_bytes(), jpeg.name).get_json()
    expected = cli_predict(capsys, tiny_run, jpeg)
    assert "central 207 of 423 px" in result["preprocessing"] == expected["preprocessing"]
    shown = {entry["class"]: entry["probability"] for entry in result["probabilities"]}
    assert shown == pytest.approx(expected["probabilities"], abs=1e-6)
    info = client.get("/api/info").get_json()
    assert info["cutout"] == {"raw_size": 423, "crop": 207, "resample": "box"} and info["stored_size"] == 69


def test_the_page_can_ask_for_another_crop(client, dev_jpegs):
    jpeg = next(dev_jpegs.glob("*.jpeg")).read_bytes()

    def classify(fraction):
        return client.post("/api/classify", data={"image": (io.BytesIO(jpeg), "g.jpeg"), "crop_fraction": fraction},
                           content_type="multipart/form-data")

    whole, auto = classify("1").get_json(), classify("auto").get_json()
    assert "as asked" in whole["preprocessing"] and whole["image"] != auto["image"]
    refused = classify("2")
    assert refused.status_code == 400 and "crop fraction" in refused.get_json()["error"]


def encoded(image, kind, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def test_a_phones_mpo_jpeg_is_classified_by_its_first_picture_as_cli_predict_does(client, capsys, tiny_run,
                                                                                   galaxy_png, tmp_path):
    galaxy, depth_map = Image.open(galaxy_png).convert("RGB"), Image.new("RGB", (40, 30), (255, 0, 0))
    mpo = tmp_path / "phone.jpg"
    mpo.write_bytes(encoded(galaxy, "MPO", save_all=True, append_images=[depth_map]))
    assert Image.open(mpo).format == "MPO"
    result = post(client, mpo.read_bytes(), mpo.name).get_json()
    expected = cli_predict(capsys, tiny_run, mpo)
    assert result["class"] == expected["class"] and result["preprocessing"] == expected["preprocessing"]
    shown = {entry["class"]: entry["probability"] for entry in result["probabilities"]}
    assert shown == pytest.approx(expected["probabilities"], abs=1e-6)
    # A 12 MP phone photo is decoded at reduced scale as a plain JPEG of the same picture is.
    photo = galaxy.resize((4000, 3000), Image.Resampling.BICUBIC)
    plain = decode_upload(encoded(photo, "JPEG", quality=90), "photo.jpg", 69, cutout.CutoutRecipe(423, 207))
    multi = decode_upload(encoded(photo, "MPO", quality=90, save_all=True, append_images=[depth_map]), "photo.jpg",
                          69, cutout.CutoutRecipe(423, 207))
    assert np.array_equal(plain[0], multi[0]) and plain[1] == multi[1]


@pytest.mark.parametrize("fraction", ["5e-324", "0.001"])
def test_a_crop_fraction_that_keeps_less_than_a_pixel_is_refused_as_such(client, capsys, tiny_run, galaxy_png,
                                                                         tmp_path, fraction):
    jpeg = tmp_path / "galaxy.jpeg"
    jpeg.write_bytes(encoded(Image.open(galaxy_png).convert("RGB"), "JPEG"))
    for data, name in [(jpeg.read_bytes(), jpeg.name), (galaxy_png.read_bytes(), galaxy_png.name)]:
        response = client.post("/api/classify", data={"image": (io.BytesIO(data), name), "crop_fraction": fraction},
                               content_type="multipart/form-data")
        error = response.get_json()["error"]
        assert response.status_code == 400 and error.startswith("crop fraction ") and "keeps less than one pixel" \
            in error and "69 px image (1/69 keeps one)" in error, error
    code = main(["predict", str(tiny_run), str(jpeg), "--crop-fraction", fraction])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {jpeg}: crop fraction ") and "keeps less than one pixel" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_sixteen_bit_png_is_classified_with_its_real_brightness(client, galaxy_png):
    grey8 = np.asarray(Image.open(galaxy_png).convert("L"))
    buffer = io.BytesIO()
    Image.fromarray(grey8.astype(np.uint16) * 257).save(buffer, format="PNG")
    result = post(client, buffer.getvalue(), "deep.png").get_json()
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["image"].split(",")[1]))))
    assert np.array_equal(shown[..., 0], grey8), "scaled to 8 bits, not clipped to white"


def test_sample_galaxy_is_classified_with_its_label(client):
    result = client.get("/api/samples/2").get_json()
    assert result["label"] == client.get("/api/info").get_json()["samples"][2]["label"]
    assert sum(entry["probability"] for entry in result["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert client.get("/api/samples/99").status_code == 404


def test_a_sample_galaxy_is_classified_once_however_often_it_is_asked_for(app, client, monkeypatch):
    classifier = app.extensions["galaxy_class"]
    first = client.get("/api/samples/3").get_json()
    calls = []
    monkeypatch.setattr(classifier, "classify", lambda image: calls.append(image))
    assert [client.get("/api/samples/3").get_json() for _ in range(3)] == [first] * 3 and calls == []


@pytest.mark.parametrize("data, name, words", [
    (b"just some text\n", "notes.txt", ["notes.txt", "not an image"]),
    (b"", "empty.png", ["empty.png", "empty"]),
    (None, "broken.png", ["broken.png", "damaged or truncated"]),
    (None, "galaxy.gif", ["galaxy.gif", "GIF", "PNG or JPEG"]),
])
def test_a_bad_file_gets_a_clear_message_and_the_server_keeps_serving(client, galaxy_png, data, name, words):
    if name == "broken.png":
        data = galaxy_png.read_bytes()[:-200]
    elif name == "galaxy.gif":
        buffer = io.BytesIO()
        Image.open(galaxy_png).save(buffer, format="GIF")
        data = buffer.getvalue()
    response = post(client, data, name)
    assert response.status_code == 400
    for word in words:
        assert word in response.get_json()["error"]
    assert post(client, galaxy_png.read_bytes()).status_code == 200


def test_a_request_without_a_file_is_refused(client):
    response = client.post("/api/classify", data={}, content_type="multipart/form-data")
    assert response.status_code == 400 and "no file" in response.get_json()["error"]


def test_an_upload_over_the_size_limit_is_refused(client):
    response = post(client, b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert response.status_code == 413 and "larger than 10 MB" in response.get_json()["error"]
    response = post(client, b"\0" * MAX_UPLOAD_BYTES)  # the limit is on the file, not on the form around it
    assert response.status_code == 400 and "not an image" in response.get_json()["error"]


def test_an_image_claiming_huge_dimensions_is_refused_before_decoding(client):
    buffer = io.BytesIO()
    Image.new("L", (6000, 5000)).save(buffer, format="PNG")  # 30 million pixels in a few kB
    response = post(client, buffer.getvalue(), "bomb.png")
    assert response.status_code == 400 and "6000x5000" in response.get_json()["error"]


def test_a_large_jpeg_decoded_at_reduced_scale_is_within_a_few_grey_levels_of_a_full_decode(galaxy_png):
    """Draft-mode decoding (libjpeg's 1/2-1/8 scales) bounds memory; it must not change what the model sees
    beyond rounding: a mean under 1 grey level and 99% of values within 5 of the full decode, on noisy skies."""
    recipe = cutout.CutoutRecipe(423, 207, "box")
    galaxy = Image.open(galaxy_png).convert("RGB")
    rng = np.random.default_rng(0)
    for side in (1000, 1130, 2000, 4899):
        enlarged = np.asarray(galaxy.resize((side, side), Image.Resampling.BICUBIC), dtype=float)
        noisy = np.clip(enlarged + rng.normal(0, 8, enlarged.shape), 0, 255).astype(np.uint8)
        data = io.BytesIO()
        Image.fromarray(noisy).save(data, format="JPEG", quality=90)
        expected, expected_note = load_image(io.BytesIO(data.getvalue()), 69, recipe)  # what `predict` does
        shown, note = decode_upload(data.getvalue(), "big.jpeg", 69, recipe)
        difference = np.abs(shown.astype(int) - expected)
        assert note == expected_note
        if side < 1130:  # under 8 times the 141 px the recipe keeps: decoded whole
            assert difference.max() == 0, side
        else:
            assert difference.mean() < 1 and np.percentile(difference, 99) <= 5, (side, difference.mean())


def test_a_page_served_on_every_address_answers_to_addresses_and_this_machines_names_only(tiny_run):
    client = create_app(tiny_run, host="0.0.0.0").test_client()
    for host in ["192.168.1.20:8000", "[fe80::1]:8000", "localhost:8000", socket.gethostname()]:
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    for host in ["evil.example:8000", "192.168.1.20.evil.example", ""]:
        response = client.get("/api/info", headers={"Host": host})
        assert response.status_code == 400 and "Host" in response.get_json()["error"], host


def test_uploads_never_touch_a_temporary_file(client, monkeypatch):
    import werkzeug.formparser

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was spilled to a temporary file")

    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", refuse)
    monkeypatch.setattr(werkzeug.formparser, "TemporaryFile", refuse, raising=False)
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 1_000_000  # over werkzeug's 500 kB threshold for spilling to disk
    assert post(client, buffer.getvalue()).status_code == 200


def test_a_failure_inside_the_server_is_a_message_and_the_next_request_works(app, client, galaxy_png, monkeypatch):
    classifier = app.extensions["galaxy_class"]

    def broken(image):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(classifier, "classify", broken)
    response = post(client, galaxy_png.read_bytes())
    assert response.status_code == 500 and "keeps serving" in response.get_json()["error"]
    monkeypatch.undo()
    assert post(client, galaxy_png.read_bytes()).status_code == 200


def test_serve_on_a_missing_run_is_one_error_line(capsys, tmp_path):
    code = main(["serve", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "nope" in err and "Traceback" not in err


def test_serve_on_a_busy_port_is_one_error_line(capsys, tiny_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", str(tiny_run), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and f"127.0.0.1:{port}" in err and "--port" in err


# The page in a real browser.

@contextmanager
def running(app):
    """`app` served on 127.0.0.1 at an ephemeral port, in a thread; yields its URL."""
    server = bind(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        thread.join(timeout=10)


def chromium():
    """Debian's Chromium driven by its own ChromeDriver through Selenium, or the reason there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install -r requirements.txt)"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        return None, "no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tempfile.mkdtemp(prefix="galaxy_class_chromium_")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # Service with an explicit path: Selenium Manager would otherwise try to download a driver.
    driver = webdriver.Chrome(service=Service(driver), options=options)
    driver.profile_dir = profile
    return driver, None


@pytest.fixture(scope="module")
def browser():
    driver, reason = chromium()
    if driver is None:
        if os.environ.get("GALAXY_CLASS_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test must run here: {reason}")
        pytest.skip(reason)
    yield driver
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def wait_for_state(driver, *states, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    def state(d):
        return d.find_element("tag name", "body").get_attribute("data-state")

    WebDriverWait(driver, timeout).until(lambda d: state(d) in states)
    return state(driver)


def choose_file(driver, path):
    driver.find_element("id", "file").send_keys(str(path))


def test_page_in_chromium_identifies_an_upload_like_cli_predict(browser, app, capsys, tiny_run, galaxy_png, tmp_path):
    expected = cli_predict(capsys, tiny_run, galaxy_png)
    with running(app) as url:
        browser.get(url)
        assert wait_for_state(browser, "ready") == "ready"
        choose_file(browser, galaxy_png)
        assert wait_for_state(browser, "done", "error") == "done"
        assert browser.find_element("id", "top-class").text == expected["class"]
        assert browser.find_element("id", "message").get_attribute("hidden") is not None
        bars = browser.find_elements("css selector", "#bars .bar")
        shown = {bar.get_attribute("data-class"): float(bar.get_attribute("data-probability")) for bar in bars}
        assert shown == pytest.approx(expected["probabilities"], abs=1e-6)
        top_bar = browser.find_element("css selector", "#bars .bar.top")
        assert top_bar.get_attribute("data-class") == expected["class"]
        # The overlay shown is the Grad-CAM of the top class until another bar is clicked.
        assert browser.find_element("id", "cam-class").text == expected["class"]
        other = next(bar for bar in bars if bar.get_attribute("data-class") != expected["class"])
        other.click()
        assert browser.find_element("id", "cam-class").text == other.get_attribute("data-class")
        assert browser.execute_script("return document.getElementById('overlay').naturalWidth") > 0
        assert browser.execute_script("return document.getElementById('colour-bar').naturalWidth") > 0
        assert browser.find_element("id", "colour-bar").is_displayed()
        shot = tmp_path / "page.png"
        assert browser.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000


def test_page_in_chromium_says_how_a_raw_cutout_was_cut_and_lets_the_user_change_it(browser, app, dev_jpegs):
    jpeg = next(dev_jpegs.glob("*.jpeg"))
    with running(app) as url:
        browser.get(url)
        assert wait_for_state(browser, "ready") == "ready"
        assert "central 207 px" in browser.find_element("id", "recipe").text
        choose_file(browser, jpeg)
        assert wait_for_state(browser, "done", "error") == "done"
        assert "central 207 of 423 px" in browser.find_element("id", "preprocessing").text
        cut = browser.find_element("id", "image").get_attribute("src")
        browser.execute_script("document.body.dataset.state = 'waiting'")
        browser.find_element("id", "crop-fraction").send_keys("1\t")  # change event: the same file again
        assert wait_for_state(browser, "done", "error") == "done"
        assert "central 1 of the image, as asked" in browser.find_element("id", "preprocessing").text
        assert browser.find_element("id", "image").get_attribute("src") != cut


def test_page_in_chromium_explains_bad_files_and_keeps_working(browser, app, tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("no galaxy here\n")
    too_big = tmp_path / "huge.png"
    too_big.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    with running(app) as url:
        browser.get(url)
        wait_for_state(browser, "ready")
        bad_files = [(not_an_image, ["notes.txt", "not an image"]), (too_big, ["huge.png", "larger than 10 MB"])]
        for path, words in bad_files:
            choose_file(browser, path)
            assert wait_for_state(browser, "error") == "error"
            message = browser.find_element("id", "message")
            assert message.is_displayed() and all(w in message.text for w in words), message.text
            assert not browser.find_element("id", "result").is_displayed()
        # The server still answers: a bundled sample galaxy is classified.
        browser.find_element("css selector", "#samples button[data-sample='2']").click()
        assert wait_for_state(browser, "done") == "done"
        assert browser.find_element("id", "top-class").text
        assert not browser.find_element("id", "message").is_displayed()


def screenshot(run_dir, out, sample=2):
    """The README's picture: the page for `run_dir` after clicking bundled sample galaxy `sample`."""
    driver, reason = chromium()
    if driver is None:
        sys.exit(f"error: {reason}")
    try:
        with running(create_app(run_dir)) as url:
            driver.get(url)
            wait_for_state(driver, "ready")
            driver.find_element("css selector", f"#samples button[data-sample='{sample}']").click()
            wait_for_state(driver, "done")
            # Just tall enough for the whole page: the window's height includes its own frame.
            frame, page = driver.execute_script(
                "return [window.outerHeight - window.innerHeight,"
                " Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)]")
            driver.set_window_size(1280, frame + page)
            driver.save_screenshot(str(out))
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
    print(f"Wrote {out}")


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:4]))
