"""Specification of galaxy_class.jitter: random shifts, zooms and colour changes of training images."""

import numpy as np
import pytest

from conftest import collect
from galaxy_class.batches import make_dataset
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.jitter import PARAMETERS, apply, draw


def identity(n):
    params = np.zeros((n, PARAMETERS), np.float32)
    params[:, 2:] = 1.0
    return params


@pytest.fixture(scope="module")
def images(sample_file):
    return read_images(open_galaxy10(sample_file), np.arange(6))


def test_draw_stays_in_its_bounds_and_draws_nothing_when_off():
    rng = np.random.default_rng(0)
    params = draw(rng, 1000, 0.1, 0.2)
    assert params.shape == (1000, PARAMETERS) and params.dtype == np.float32
    assert np.abs(params[:, :2]).max() <= 0.1 and np.abs(params[:, :2]).max() > 0.09
    assert np.abs(params[:, 2] - 1).max() <= 0.1 and np.abs(params[:, 3:] - 1).max() <= 0.2
    assert (params[:, 3] != params[:, 4]).all() and (params[:, 4] != params[:, 5]).all(), "a factor per channel"
    before = np.random.default_rng(1)
    np.testing.assert_array_equal(draw(before, 5, 0.0, 0.0), identity(5))
    assert before.integers(1 << 30) == np.random.default_rng(1).integers(1 << 30), "off: no random numbers used"


def test_identity_parameters_give_back_the_images(images):
    out = np.asarray(apply(images, identity(len(images))))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)


def test_a_shift_moves_the_image_and_reflects_at_the_edge(images):
    params = identity(len(images))
    width = images.shape[2]
    params[:, 0] = 3 / width  # three pixels to the right
    out = np.asarray(apply(images, params))
    np.testing.assert_array_equal(out[:, :, 3:], images[:, :, :-3])
    np.testing.assert_array_equal(out[:, :, :3], images[:, :, 2::-1])  # the left edge mirrors the first columns
    params[:, 0], params[:, 1] = 0, -2 / images.shape[1]  # two pixels up
    np.testing.assert_array_equal(np.asarray(apply(images, params))[:, :-2], images[:, 2:])


def test_a_zoom_enlarges_about_the_centre(images):
    params = identity(len(images))
    params[:, 2] = 2.0
    out = np.asarray(apply(images, params)).astype(int)
    c = images.shape[1] // 2  # odd sizes: the centre pixel stays where it is
    np.testing.assert_array_equal(out[:, c, c], images[:, c, c])
    np.testing.assert_array_equal(out[:, c + 2, c - 4], images[:, c + 1, c - 2])
    params[:, 2] = 0.5  # out: the image at half size in the middle, its reflections around it
    out = np.asarray(apply(images, params)).astype(int)
    np.testing.assert_array_equal(out[:, c + 1, c - 2], images[:, c + 2, c - 4])


def test_colour_scales_each_channel_and_stays_in_range(images):
    params = identity(len(images))
    params[:, 3:] = [0.5, 1.0, 3.0]
    out = np.asarray(apply(images, params)).astype(int)
    expected = np.clip(np.round(images * np.array([0.5, 1.0, 3.0])), 0, 255)
    np.testing.assert_array_equal(out, expected)


def test_jittered_batches_are_seeded_and_keep_the_order_and_flips_of_plain_ones(sample_file):
    g = open_galaxy10(sample_file)
    indices = np.arange(64)
    plain, labels = collect(make_dataset(g, indices, 16, shuffle=True, augment=True, seed=5))
    jittered, same_labels = collect(make_dataset(g, indices, 16, shuffle=True, augment=True, seed=5,
                                                 shift_zoom=0.1, colour=0.1))
    assert jittered.dtype == np.uint8 and jittered.shape == plain.shape
    np.testing.assert_array_equal(same_labels, labels)
    assert not np.array_equal(jittered, plain)
    # The centre of a shifted, zoomed and recoloured galaxy still resembles its plain view far more than
    # another galaxy's: each image was jittered, not swapped.
    centre = slice(24, 45)
    own = np.abs(jittered[:, centre, centre].astype(int) - plain[:, centre, centre]).mean(axis=(1, 2, 3))
    other = np.abs(jittered[:, centre, centre].astype(int) - np.roll(plain, 1, axis=0)[:, centre, centre])
    assert (own < other.mean(axis=(1, 2, 3))).mean() > 0.9
    again = collect(make_dataset(g, indices, 16, shuffle=True, augment=True, seed=5, shift_zoom=0.1, colour=0.1))
    np.testing.assert_array_equal(again[0], jittered)
    other_seed = collect(make_dataset(g, indices, 16, shuffle=True, augment=True, seed=6, shift_zoom=0.1,
                                      colour=0.1))
    assert not np.array_equal(other_seed[0], jittered)
    passes = make_dataset(g, indices, 16, shuffle=True, augment=True, seed=5, shift_zoom=0.1, colour=0.1)
    first, second = collect(passes), collect(passes)
    np.testing.assert_array_equal(first[0], jittered)
    assert not np.array_equal(second[0], jittered), "each pass over the data its own jitter"
    resumed = collect(make_dataset(g, indices, 16, shuffle=True, augment=True, seed=5, shift_zoom=0.1,
                                   colour=0.1, first_epoch=1))
    np.testing.assert_array_equal(resumed[0], second[0])
