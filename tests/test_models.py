import h5py
import keras
import numpy as np
import pytest

from galaxy_class import GalaxyClassError
from galaxy_class.models import CAFFE_MEAN_RGB, base_model, build_model


def file_weights(path, group):
    with h5py.File(path, "r") as f:
        g = f[group]
        return [np.asarray(g[name]) for name in g.attrs["weight_names"]]


def test_mobilenet_imagenet_weights_really_load(shared_weights):
    model = build_model("mobilenet", 4, (69, 69, 3), image_size=96, weights="imagenet")
    path = shared_weights / "mobilenet_v1_0.25_224_imagenet_notop.h5"
    for layer in ["conv1", "conv_dw_7", "conv_pw_13_bn"]:
        for ours, theirs in zip(base_model(model).get_layer(layer).get_weights(), file_weights(path, layer)):
            np.testing.assert_array_equal(ours, theirs)


def test_squeezenet_weights_load_with_conv1_turned_from_bgr_to_rgb(shared_weights):
    path = shared_weights / "squeezenet_v1.1_imagenet_notop.h5"
    model = build_model("squeezenet", 4, (69, 69, 3), image_size=96, weights=str(path))
    base = base_model(model)
    for group in ["fire2/squeeze1x1", "fire9/expand3x3"]:
        for ours, theirs in zip(base.get_layer(group.replace("/", "_")).get_weights(), file_weights(path, group)):
            np.testing.assert_array_equal(ours, theirs)
    kernel, bias = base.get_layer("conv1").get_weights()
    theirs_kernel, theirs_bias = file_weights(path, "conv1")
    np.testing.assert_array_equal(kernel, theirs_kernel[:, :, ::-1, :])
    np.testing.assert_array_equal(bias, theirs_bias)


def test_squeezenet_preprocessing_matches_caffe_mode_of_the_original(shared_weights):
    """RGB input minus the mean into RGB-ordered conv1 equals Keras' caffe preprocessing into the original BGR conv1."""
    path = shared_weights / "squeezenet_v1.1_imagenet_notop.h5"
    model = build_model("squeezenet", 4, (32, 32, 3), image_size=32, weights=str(path))
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ours = keras.Model(model.input, model.get_layer("caffe_mean").output)(images)
    caffe = keras.applications.imagenet_utils.preprocess_input(images.astype("float32"), mode="caffe")
    np.testing.assert_allclose(np.asarray(ours)[..., ::-1], caffe, atol=1e-4)
    assert CAFFE_MEAN_RGB[0] > CAFFE_MEAN_RGB[2]  # red mean first: the model's input is RGB


@pytest.mark.parametrize("arch", ["mobilenet", "mobilenet_v2", "squeezenet"])
def test_model_takes_uint8_images_of_the_data_and_returns_probabilities(arch):
    model = build_model(arch, 5, (69, 69, 3), image_size=64, weights="none")
    assert model.input.dtype == "uint8"
    probs = np.asarray(model(np.zeros((3, 69, 69, 3), np.uint8)))
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def test_bad_model_and_weights_names_give_project_errors(tmp_path):
    with pytest.raises(GalaxyClassError, match="unknown model"):
        build_model("resnet", 4, (69, 69, 3))
    with pytest.raises(GalaxyClassError, match="not found"):
        build_model("mobilenet", 4, (69, 69, 3), weights=str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not weights")
    with pytest.raises(GalaxyClassError, match="junk.h5"):
        build_model("squeezenet", 4, (69, 69, 3), weights=str(junk))


def test_failed_weight_download_says_where_to_put_the_file(monkeypatch):
    monkeypatch.setattr("galaxy_class.models.MOBILENET_WEIGHTS_URL", "http://127.0.0.1:9/")  # nothing listens
    with pytest.raises(GalaxyClassError, match=r"cannot download .*127\.0\.0\.1.*mobilenet_7_5_224_tf_no_top\.h5"):
        build_model("mobilenet", 4, (69, 69, 3), alpha=0.75, weights="imagenet")


@pytest.mark.parametrize("arch", ["mobilenet", "squeezenet"])
def test_eager_and_compiled_predictions_agree_after_loading(arch, tmp_path):
    """Eager calls (evaluation, the web page) and compiled ones (fit, predict, export) see the same pixels."""
    build_model(arch, 4, (69, 69, 3), image_size=128, weights="none").save(tmp_path / "m.keras")
    model = keras.saving.load_model(tmp_path / "m.keras")
    assert model.get_layer("resize").input.dtype == "float32", "eager Resizing of uint8 rounds to uint8"
    images = np.random.default_rng(0).integers(0, 256, (8, 69, 69, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(model(images, training=False)), model.predict(images, verbose=0),
                               rtol=1e-4, atol=1e-6)


def test_bundled_weight_files_are_the_published_ones():
    import hashlib

    from galaxy_class.models import BUNDLED_WEIGHTS, SQUEEZENET_WEIGHTS_SHA256

    def sha256(name):
        return hashlib.sha256((BUNDLED_WEIGHTS / name).read_bytes()).hexdigest()

    assert sha256("squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5") == SQUEEZENET_WEIGHTS_SHA256
    assert sha256("mobilenet_2_5_224_tf_no_top.h5") == "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"
