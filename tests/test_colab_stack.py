"""The notebooks on Colab: one project address everywhere, a setup cell under the title that sets Colab up without touching its
TensorFlow and Keras, and version floors that a test runs on. (The TFLite export on Colab's Keras is checked by
running both notebooks in quick mode in the same environment.)

`make test-colab` runs this file again in .venv-colab, built from Colab's versions (requirements-colab.txt).
"""

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import ROOT

NOTEBOOKS = ["galaxy_class_mobilenet.ipynb", "galaxy_class_squeezenet.ipynb"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
URL = PYPROJECT["project"]["urls"]["Repository"]
ON_COLAB_VERSIONS = Path(sys.prefix).resolve() == ROOT / ".venv-colab"


def colab_url(notebook):
    return f"https://colab.research.google.com/github/{URL.removeprefix('https://github.com/')}/blob/main/{notebook}"


def badge(notebook):
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def cells(notebook):
    return [("".join(c["source"])) for c in json.loads((ROOT / notebook).read_text())["cells"]]


def pins(requirements):
    """{name: version} of a requirements file that pins every package with ==."""
    found = {}
    for line in (ROOT / requirements).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (pin,) = requirement.specifier
            assert pin.operator == "==", line
            found[requirement.name.lower()] = Version(pin.version)
    return found


def run_setup_cell(cwd, on_colab=True, times=1):
    """The committed notebooks' setup cell (under the title) run by this Python in `cwd`, `times` times, as on Colab or elsewhere."""
    fake_colab = "sys.modules['google.colab'] = types.ModuleType('google.colab')\n" if on_colab else ""
    script = f"import sys, types\n{fake_colab}for _ in range({times}):\n    exec(sys.argv[1])\n"
    return subprocess.run([sys.executable, "-c", script, cells(NOTEBOOKS[0])[1]], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def installed():
    """Name and version of every distribution in this environment but ours."""
    listed = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            check=True).stdout
    return {d["name"]: d["version"] for d in json.loads(listed) if d["name"] != "galaxy-class"}


def test_every_place_names_the_same_project_address():
    assert URL == "https://github.com/AKSHYATA15/classification-of-galaxies-using-MobileNet"
    assert f'repository-code: "{URL}"' in (ROOT / "CITATION.cff").read_text()
    readme = (ROOT / "README.md").read_text()
    assert badge(NOTEBOOKS[0]) in readme
    colab_links = re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", readme)
    assert set(colab_links) <= {*map(colab_url, NOTEBOOKS)}
    for notebook in NOTEBOOKS:
        title, setup = cells(notebook)[:2]
        assert f'REPO = "{URL}"' in setup
        assert badge(notebook) in title
    for path in ["README.md", "CITATION.cff", "pyproject.toml", *NOTEBOOKS]:
        assert "galaxy-class/galaxy-class" not in (ROOT / path).read_text(), f"{path} names an old address"


def test_both_notebooks_have_the_same_setup_cell_right_under_the_title():
    assert cells(NOTEBOOKS[0])[1] == cells(NOTEBOOKS[1])[1]


def test_dependency_floors_are_the_oldest_versions_a_test_runs_on_and_astronn_is_not_one():
    pinned, colab = pins("requirements.txt"), pins("requirements-colab.txt")
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    extras = [line for lines in PYPROJECT["project"].get("optional-dependencies", {}).values() for line in lines]
    for line in [*PYPROJECT["project"]["dependencies"], *extras]:
        requirement = Requirement(line)
        name = requirement.name.lower()
        (specifier,) = requirement.specifier
        # Colab lacks a few (waitress for the web page, astropy for FITS): their floor is the pinned version.
        tested = [env[name] for env in (pinned, colab) if name in env]
        assert specifier.operator == ">=" and Version(specifier.version) == min(tested), line
    installs = [(ROOT / path).read_text() for path in ["requirements.txt", "requirements-colab.txt", "pyproject.toml"]]
    assert not [text for text in [*installs, cells(NOTEBOOKS[0])[1]] if "astronn" in text.lower()], "nothing imports it"


def test_setup_cell_does_nothing_outside_colab(tmp_path):
    done = run_setup_cell(tmp_path, on_colab=False)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert not list(tmp_path.iterdir())


def test_setup_cell_stops_with_one_line_when_an_install_fails(tmp_path):
    (tmp_path / "galaxy_class").mkdir()  # looks like the project, but pip finds nothing to install
    done = run_setup_cell(tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert re.fullmatch(r"Setup stopped: \S+ -m pip install .* failed: ERROR: .*not appear to be a Python project.*\n",
                        done.stderr), done.stderr


@pytest.mark.skipif(not ON_COLAB_VERSIONS, reason="runs in .venv-colab, on Colab's versions (make test-colab)")
def test_setup_cell_on_colab_installs_only_the_package_and_keeps_colabs_tensorflow_and_keras(tmp_path):
    before = installed()
    done = run_setup_cell(ROOT, times=2)  # run twice: the checkout it is in is used both times
    assert done.returncode == 0, done.stderr
    assert installed() == before
    colab = pins("requirements-colab.txt")
    assert [version("tensorflow"), version("keras")] == [str(colab["tensorflow"]), str(colab["keras"])]
    where = subprocess.run([sys.executable, "-c", "import galaxy_class; print(galaxy_class.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.strip() == str(ROOT / "galaxy_class" / "__init__.py")
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    assert lines[0].startswith("Training on the GPU: ") or "Runtime > Change runtime type" in lines[0]
    assert not (ROOT / URL.rsplit("/", 1)[1]).exists(), "cloned into the checkout"


def test_one_version_number_everywhere_and_the_changelog_has_it():
    import galaxy_class

    version = PYPROJECT["project"]["version"]
    assert galaxy_class.__version__ == version
    assert f"\nversion: {version}\n" in (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", (ROOT / "CHANGELOG.md").read_text(), re.M)
