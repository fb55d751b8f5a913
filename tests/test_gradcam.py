
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from galaxy_class.batches import dihedral
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.errors import GalaxyClassError
from galaxy_class.predict import predict_proba
from galaxy_class.gradcam import gradcam, gradcam_figure, overlay, scaled_to_peak, to_image_frame, view_gradients
from galaxy_class.models import build_model
from galaxy_class.runs import load_run

SIZE = 16
# Trained on the bundled sample by `make run`: every dev-file galaxy is held out from it.


def colour_model():
    """A model shaped like ours (resize, scaling, nested "base", pool, dropout, softmax) whose class 0
    is "more red than green" and class 1 the opposite; its base halves the resolution, so the heatmap
    must be upsampled back onto the right pixels."""
    base_in = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(2, 1, use_bias=False, activation="relu", name="red_green")(base_in)
    base = keras.Model(base_in, layers.AveragePooling2D(2)(x), name="base")
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    x = layers.Resizing(SIZE, SIZE, name="resize")(inputs)
    x = layers.Rescaling(1 / 255, name="scale")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(base(x))
    x = layers.Dropout(0.5, name="dropout")(x)
    model = keras.Model(inputs, layers.Dense(2, activation="softmax", name="probabilities")(x))
    base.get_layer("red_green").set_weights([np.array([[[[1, 0], [0, 1], [0, 0]]]], "float32")])
    model.get_layer("probabilities").set_weights([np.array([[1, -1], [-1, 1]], "float32"), np.zeros(2, "float32")])
    return model


def squares(red_at, green_at):
    """A black image with a red and a green square filling the quadrants given as (row, column) halves."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    h = SIZE // 2
    for channel, (row, col) in [(0, red_at), (1, green_at)]:
        image[row * h:(row + 1) * h, col * h:(col + 1) * h, channel] = 255
    return image


def quadrant_means(heatmap):
    """Mean heat of each quadrant's inner part (away from the blur of upsampling), as a 2x2 array."""
    h, m = SIZE // 2, 2
    return np.array([[heatmap[r * h + m:(r + 1) * h - m, c * h + m:(c + 1) * h - m].mean() for c in (0, 1)]
                     for r in (0, 1)])


def test_heatmap_lights_up_the_evidence_for_the_class_asked_for():
    model = colour_model()
    image = squares(red_at=(0, 0), green_at=(1, 1))
    red, green = gradcam(model, np.stack([image, image]), class_index=[0, 1])
    assert quadrant_means(red)[0, 0] > 0.9 and quadrant_means(red)[1, 1] < 0.05
    assert quadrant_means(green)[1, 1] > 0.9 and quadrant_means(green)[0, 0] < 0.05
    # Empty quadrants carry no evidence for either class.
    assert quadrant_means(red)[0, 1] < 0.05 and quadrant_means(red)[1, 0] < 0.05


def test_heatmap_moves_with_the_image_content():
    model = colour_model()
    moved = squares(red_at=(1, 0), green_at=(0, 1))
    (heat,) = gradcam(model, moved[None], class_index=0)
    assert quadrant_means(heat).argmax() == 2  # bottom-left, where the red square now is
    assert quadrant_means(heat)[1, 0] > 0.9


def test_default_class_is_the_predicted_one():
    model = colour_model()
    redder = squares(red_at=(0, 0), green_at=(1, 1))
    greener = redder.copy()
    greener[:SIZE // 2, :SIZE // 2, 0] = 0
    images = np.stack([redder, greener])
    predicted = predict_proba(model, images).argmax(axis=1)
    assert list(predicted) == [0, 1]
    np.testing.assert_array_equal(gradcam(model, images), gradcam(model, images, class_index=predicted))


def test_trained_model_heatmaps_have_the_input_size_and_unit_range(tiny_run, sample_file):
    model, config, _ = load_run(tiny_run)
    g = open_galaxy10(sample_file)
    images = read_images(g, range(6))
    heat = gradcam(model, images)
    assert heat.shape == (6, *config.input_shape[:2]) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0
    # Each heatmap is scaled to peak at 1, or all 0 where nothing speaks for the class.
    assert set(np.round(heat.max(axis=(1, 2)), 6)) <= {0.0, 1.0}
    predicted = predict_proba(model, images).argmax(axis=1)
    np.testing.assert_allclose(heat, gradcam(model, images, class_index=predicted), atol=1e-6)


def test_squeezenet_heatmaps_have_the_input_size():
    keras.utils.set_random_seed(0)  # untrained weights: some draws leave every map zero
    model = build_model("squeezenet", 3, (40, 40, 3), image_size=64, weights="none")
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    heat = gradcam(model, images, class_index=2)
    assert heat.shape == (2, 40, 40) and 0 <= heat.min() and heat.max() <= 1
    assert not np.allclose(heat[0], heat[1], atol=0.05)


def test_a_class_the_model_does_not_have_is_refused():
    with pytest.raises(GalaxyClassError, match="classes 0..1"):
        gradcam(colour_model(), squares((0, 0), (1, 1))[None], class_index=2)


def test_overlay_keeps_cold_pixels_and_colours_hot_ones():
    image = np.full((4, 4, 3), 100, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1
    out = overlay(image, heat, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[1:, 1:], image[1:, 1:])
    assert out[0, 0, 0] > 100 and out[0, 0, 2] < 100  # jet's hot end is red


def test_gradcam_figure_has_a_row_per_class_with_predictions(tiny_run, sample_file):
    model, config, _ = load_run(tiny_run)
    g = open_galaxy10(sample_file)
    images, labels = read_images(g, range(120)), g.labels[:120]
    fig = gradcam_figure(model, images, labels, config.class_names, per_class=3)
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 3 * len(config.class_names) + 1  # and the colour bar
    assert "Grad-CAM" in axes[-1].get_ylabel() and axes[-1].get_ylim() == (0, 1)
    assert [axes[3 * k].get_ylabel() for k in range(len(config.class_names))] == list(config.class_names)
    shown = [ax for ax in axes[:-1] if ax.images]
    expected = sum(min(3, int((labels == k).sum())) for k in range(len(config.class_names)))
    assert len(shown) == expected
    assert all(ax.get_title().split()[0] in " ".join(config.class_names) for ax in shown)


@pytest.fixture(scope="module")
def sample_mobilenet(sample_mobilenet_run):
    return load_run(sample_mobilenet_run)[0]


def centrality(heat):
    """Mean share of heat inside the disk of radius 1/4 of the width around the centre, the share of maps
    peaking inside it, and the disk's share of the image (a flat map's heat)."""
    h, w = heat.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= (w / 4) ** 2
    share = ((heat * disk).sum(axis=(1, 2)) / heat.sum(axis=(1, 2))).mean()
    return share, disk.ravel()[heat.reshape(len(heat), -1).argmax(axis=1)].mean(), disk.mean()


def test_maps_of_held_out_dev_galaxies_peak_on_the_galaxy(sample_mobilenet, dev_file):
    # The dev file's cutouts are centred on their galaxy; the bounds below leave room for the sample-trained
    # model's weaker maps (benchmarks/explanations.py measures the development runs).
    images = read_images(open_galaxy10(dev_file), range(32))
    share, peaks, flat = centrality(gradcam(sample_mobilenet, images))
    _, last_layer_peaks, _ = centrality(gradcam(sample_mobilenet, images, views=1, layer="conv_pw_13_relu"))
    assert share > 1.2 * flat and peaks > 0.7
    assert peaks > last_layer_peaks + 0.3


@pytest.fixture(scope="module")
def imagenet_mobilenet():
    """MobileNet with its ImageNet base and a seeded untrained head, at 96 px."""
    keras.utils.set_random_seed(0)
    return build_model("mobilenet", 4, (69, 69, 3), image_size=96, weights="imagenet")


def test_rotating_a_galaxy_rotates_its_map(imagenet_mobilenet, sample_file):
    model = imagenet_mobilenet
    images = read_images(open_galaxy10(sample_file), range(3))
    turned = dihedral(images, 1)
    heat = gradcam(model, images, class_index=1)
    assert heat.max() == 1
    np.testing.assert_allclose(gradcam(model, turned, class_index=1), dihedral(heat[..., None], 1)[..., 0], atol=1e-4)
    # One view alone is not: MobileNet pads its strided convolutions on one side only.
    one = gradcam(model, images, class_index=1, views=1)
    assert np.abs(gradcam(model, turned, class_index=1, views=1) - dihedral(one[..., None], 1)[..., 0]).mean() > 0.02


def test_maps_change_when_the_weights_are_randomised(sample_mobilenet, dev_file):
    """The sanity check of Adebayo et al. (2018): a map that explains the model depends on its weights."""
    images = read_images(open_galaxy10(dev_file), range(16))
    keras.utils.set_random_seed(0)
    random = keras.models.clone_model(sample_mobilenet)
    classes = predict_proba(sample_mobilenet, images, tta=True).argmax(axis=1)
    trained, randomised = gradcam(sample_mobilenet, images, classes), gradcam(random, images, classes)
    rho = [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(trained, randomised) if b.std() > 0]
    assert np.mean(rho) < 0.7
    assert np.abs(trained - randomised).mean() > 0.1


def test_a_layer_the_base_does_not_have_is_refused():
    with pytest.raises(GalaxyClassError, match="no layer 'nowhere'"):
        gradcam(colour_model(), squares((0, 0), (1, 1))[None], layer="nowhere")


def test_elementwise_weighting_is_grad_cam_at_the_layer_before_the_pooling(imagenet_mobilenet, sample_file):
    """Below a global average pooling every cell's gradients are the same, so HiResCAM's element-wise rule
    and Grad-CAM's channel means give one map there; one block earlier they differ."""
    model = imagenet_mobilenet
    images = read_images(open_galaxy10(sample_file), range(3))

    def channel_means(layer):
        features, grads = view_gradients(model, images, 1, 8, layer)
        signed = tf.einsum("vnhwc,vnc->vnhw", features, tf.reduce_mean(grads, axis=(2, 3)))[..., None]
        return scaled_to_peak(tf.nn.relu(tf.reduce_mean(to_image_frame(signed), axis=0)), images.shape[1:3])

    last = gradcam(model, images, class_index=1, layer="conv_pw_13_relu")
    np.testing.assert_allclose(last, channel_means("conv_pw_13_relu"), atol=1e-5)
    earlier = gradcam(model, images, class_index=1, layer="conv_pw_12_relu")
    assert np.abs(earlier - channel_means("conv_pw_12_relu")).mean() > 0.02


def explanations_benchmark():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("explanations_benchmark", ROOT / "benchmarks" / "explanations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toy_classifier(size=69, resized=160):
    """A classifier shaped like build_model's (preprocessing, a base named "base", a head) whose base pads only
    at the bottom and right before each strided convolution, as MobileNet does, with 3x3 kernels of ones."""
    inputs = keras.Input((resized, resized, 3))
    x = inputs
    for i in range(3):
        x = layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
        x = layers.Conv2D(1, 3, strides=2, padding="valid", use_bias=False, kernel_initializer="ones", name=f"conv{i}")(x)
    x = layers.Conv2D(1, 3, strides=2, padding="same", use_bias=False, kernel_initializer="ones", name="conv3")(x)
    base = keras.Model(inputs, x, name="base")
    image = keras.Input((size, size, 3), dtype="uint8")
    y = base(layers.Resizing(resized, resized)(layers.Rescaling(1 / 255)(image)))
    y = layers.GlobalAveragePooling2D()(y)
    return keras.Model(image, layers.Dense(2, name="probabilities")(y), name="toy"), base


@pytest.mark.parametrize("layer", ["conv1", "conv3"])
def test_the_benchmarks_cell_centres_are_the_centres_of_each_cells_receptive_field(layer):
    model, base = toy_classifier()
    features = keras.Model(base.inputs, base.get_layer(layer).output)
    (a, b), _ = explanations_benchmark().cell_centres(model, layer)
    x = tf.Variable(tf.ones((1, 160, 160, 3)))
    h = features.output.shape[1]
    for i in (1, h // 2, h - 2):  # cells whose receptive field lies inside the image
        with tf.GradientTape() as tape:
            cell = features(x)[0, i, i, 0]
        weight = tf.reduce_sum(tf.abs(tape.gradient(cell, x)[0]), axis=(1, 2)).numpy()  # per row of the input
        row = (weight * np.arange(160)).sum() / weight.sum()  # the centre of what the cell sees, 160-px rows
        assert (a * i + b + 0.5) * 160 / 69 - 0.5 == pytest.approx(row, abs=1e-4)


def test_mobilenets_geometric_grid_sits_down_and_right_of_gradcams_and_the_even_one_is_gradcam(imagenet_mobilenet,
                                                                                               sample_file):
    bench, model = explanations_benchmark(), imagenet_mobilenet
    base = model.get_layer("base")
    (a, b), (a_col, b_col) = bench.cell_centres(model, "conv_pw_12_relu")
    image, resized, cells = model.input.shape[1], base.input.shape[1], base.get_layer("conv_pw_12_relu").output.shape[1]
    (even_a, even_b), _ = bench.evenly_spread((cells, cells), (image, image))
    assert (a, b) == (a_col, b_col) and a == pytest.approx(even_a)
    # Five bottom-right paddings before strides of 2: 0.5 + 1 + 2 + 4 + 8 pixels of the resized input.
    assert (b - even_b) * resized / image == pytest.approx(15.5)
    images = read_images(open_galaxy10(sample_file), range(3))
    even = bench.on_image_grid(geometric=False)(model, images, np.array([1, 1, 1]))
    # gradcam clips the cells' mean before resizing it, the image grid after: close, not equal. The geometric
    # grid moves the heat.
    geometric = bench.on_image_grid(geometric=True)(model, images, np.array([1, 1, 1]))
    same = gradcam(model, images, class_index=1)
    assert np.corrcoef(even.ravel(), same.ravel())[0, 1] > 0.95 > np.corrcoef(geometric.ravel(), same.ravel())[0, 1]
