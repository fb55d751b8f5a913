"""Shared fixtures: the real SDSS dev file beside the repo, and the bundled sample."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DEV = ROOT.parent / "shared" / "data" / "gz1_sdss_dev.h5"
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"
SHARED_JPEGS = ROOT.parent / "shared" / "data" / "gz1_sdss_dev_jpeg"
SAMPLE = ROOT / "data" / "gz1_sdss_sample.h5"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def collect(dataset):
    """All batches of one pass over a dataset of (images, labels), as two numpy arrays."""
    images, labels = zip(*[(np.asarray(x), np.asarray(y)) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


# An empty Keras download cache: tests see the bundled weights/ and never a user's ~/.keras.
# Keras reads KERAS_HOME when it is imported, so this runs before any test module imports it.
KERAS_HOME = Path(tempfile.mkdtemp(prefix="galaxy_class_keras_home_"))
atexit.register(shutil.rmtree, KERAS_HOME, True)
os.environ["KERAS_HOME"] = str(KERAS_HOME)


@pytest.fixture(scope="session")
def dev_file():
    if not SHARED_DEV.exists():
        pytest.skip(f"{SHARED_DEV} is absent (only in the project's workspace, not in a user's clone)")
    return SHARED_DEV


@pytest.fixture(scope="session")
def dev_jpegs():
    """The folder of original 423x423 JPEG cutouts of 120 dev-file galaxies, with labels.csv."""
    if not SHARED_JPEGS.exists():
        pytest.skip(f"{SHARED_JPEGS} is absent (only in the project's workspace, not in a user's clone)")
    return SHARED_JPEGS


@pytest.fixture(scope="session")
def shared_weights():
    if not SHARED_WEIGHTS.exists():
        pytest.skip(f"{SHARED_WEIGHTS} is absent (only in the project's workspace, not in a user's clone)")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def sample_file():
    assert SAMPLE.exists(), f"the bundled sample {SAMPLE} is missing from the repo"
    return SAMPLE



@pytest.fixture(scope="session")
def tiny_config(sample_file):
    """A training run small enough for a test: 32 px, two batches an epoch, one epoch per stage."""
    from galaxy_class.config import Config

    return Config(model="mobilenet", data=str(sample_file), weights="none", image_size=32, batch_size=32,
                  epochs=1, fine_tune_epochs=1, steps_per_epoch=2, tta=False, patience=10)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config):
    """A finished run folder of `tiny_config`."""
    from galaxy_class.train import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config, run, verbose=0)
    return run


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory, tiny_config):
    """A run whose predictions vary from image to image: ImageNet MobileNet features, a head trained two steps."""
    from galaxy_class.train import train

    run = tmp_path_factory.mktemp("runs") / "pretrained"
    train(tiny_config.replace(weights="imagenet", image_size=64, fine_tune_epochs=0), run, verbose=0)
    return run


@pytest.fixture(scope="session")
def sample_mobilenet_run(tmp_path_factory):
    """The default MobileNet trained on the bundled sample, as `make run` trains it: its run folder when
    `make run` has written one, else trained here (a few minutes on 2 cores), so tests of a really trained
    model run on a clean clone too."""
    from galaxy_class.config import Config
    from galaxy_class.runs import run_state
    from galaxy_class.train import train

    made = ROOT / "models" / "mobilenet_sample"
    if run_state(made) == "finished":
        return made
    run = tmp_path_factory.mktemp("runs") / "mobilenet_sample"
    train(Config(model="mobilenet", data="sample"), run, verbose=0)
    return run
