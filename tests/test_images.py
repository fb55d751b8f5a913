"""Raw survey cutouts in, the right answer out: the cutout recipe, pixel formats, and predict on real JPEG cutouts."""

import csv
import io
import json

import h5py
import numpy as np
import pytest
from PIL import Image

from galaxy_class import cutout
from galaxy_class.cli import main
from galaxy_class.cutout import CutoutRecipe, read_recipe
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.errors import GalaxyClassError
from galaxy_class.predict import predict_proba
from galaxy_class.images import load_image, read_rgb, run_recipe
from galaxy_class.runs import load_run

DEV_RECIPE = CutoutRecipe(423, 207, "box")


def dev_rows(dev_file, jpeg_folder):
    """(JPEG paths, the dev file's images of the same galaxies, their labels), matched by objid = file name."""
    with open(jpeg_folder / "labels.csv") as f:
        names = [row["file"] for row in csv.DictReader(f)]
    with h5py.File(dev_file, "r") as f:
        where = {int(objid): i for i, objid in enumerate(f["objid"][()])}
        rows = [where[int(name.split(".")[0])] for name in names]
        labels = f["ans"][()][rows]
        return [jpeg_folder / n for n in names], np.stack([f["images"][i] for i in rows]), labels


def test_recipes_are_read_from_files_and_known_for_galaxy10(dev_file, sample_file, tmp_path):
    assert read_recipe(dev_file) == DEV_RECIPE
    assert read_recipe(sample_file) == DEV_RECIPE, "the bundled sample carries its source's recipe"
    assert read_recipe(sample_file).crop_fraction == pytest.approx(207 / 423)
    # A Galaxy10 file as astroNN downloads it has no attribute: the documented geometry is built in.
    with h5py.File(tmp_path / "Galaxy10.h5", "w") as f:
        f["images"], f["ans"] = np.zeros((2, 69, 69, 3), np.uint8), np.zeros(2, np.uint8)
    assert read_recipe(tmp_path / "Galaxy10.h5", image_size=69, n_classes=10) == CutoutRecipe(424, 207, "box")
    assert read_recipe(tmp_path / "Galaxy10.h5", image_size=69, n_classes=4) is None, "69 px alone is not Galaxy10"
    assert read_recipe(tmp_path / "Galaxy10.h5", source="galaxy10_decals") == CutoutRecipe(512, 512, "box")
    assert read_recipe(tmp_path / "Galaxy10.h5", image_size=100) is None


@pytest.mark.parametrize("value", ['{"raw_size": 423}', '{"raw_size": 200, "crop": 300}', "not json",
                                   '{"raw_size": 423, "crop": 207, "resample": "magic"}'])
def test_a_malformed_recipe_attribute_names_the_file(tmp_path, value):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.attrs["cutout"] = value
    with pytest.raises(GalaxyClassError, match="bad.h5.*cutout recipe"):
        read_recipe(tmp_path / "bad.h5")


def test_the_recipe_turns_raw_jpegs_into_the_files_images(dev_file, dev_jpegs):
    paths, stored, _ = dev_rows(dev_file, dev_jpegs)
    cut = np.stack([load_image(p, 69, read_recipe(dev_file))[0] for p in paths])
    whole = np.stack([load_image(p, 69, read_recipe(dev_file), crop_fraction=1.0)[0] for p in paths])
    difference = np.abs(cut.astype(int) - stored).mean(axis=(1, 2, 3))
    # Measured: 0.0 for all 120 (the same JPEG bytes, the same decoder); a unit of JPEG noise is allowed.
    assert difference.max() < 1.0, f"mean absolute pixel difference up to {difference.max():.2f}"
    assert np.abs(whole.astype(int) - stored).mean() > 5, "shrinking the whole cutout gives other pixels"


def test_each_size_is_cut_as_the_recipe_says(dev_jpegs):
    raw = read_rgb(next(dev_jpegs.glob("*.jpeg")))
    stored, note = cutout.apply(raw, 69, DEV_RECIPE)
    assert "central 207 of 423" in note
    # An image already at the stored size is used as it is.
    same, note = cutout.apply(Image.fromarray(stored), 69, DEV_RECIPE)
    assert np.array_equal(same, stored) and "used as is" in note
    # A cutout of another size (here twice the raw one) keeps the same field of view, and says so.
    big = raw.resize((846, 846), Image.Resampling.LANCZOS)
    scaled, note = cutout.apply(big, 69, DEV_RECIPE)
    assert "846 px" in note and "0.489" in note
    assert np.abs(scaled.astype(int) - stored).mean() < 4
    # --crop-fraction 1.0 shows the whole image; a non-square picture is centre-cropped to a square first.
    whole, note = cutout.apply(raw, 69, DEV_RECIPE, crop_fraction=1.0)
    assert np.array_equal(whole, np.asarray(raw.resize((69, 69), Image.Resampling.BOX))) and "as asked" in note
    wide = Image.new("RGB", (423 + 100, 423))
    wide.paste(raw, (50, 0))
    assert np.array_equal(cutout.apply(wide, 69, DEV_RECIPE)[0], stored)
    with pytest.raises(GalaxyClassError, match="crop fraction"):
        cutout.apply(raw, 69, DEV_RECIPE, crop_fraction=1.5)


def test_without_a_recipe_the_whole_square_is_box_resized(sample_file, tmp_path):
    image = read_images(open_galaxy10(sample_file), [0])[0]
    Image.fromarray(np.repeat(np.repeat(image, 3, 0), 3, 1)).save(tmp_path / "big.png")
    big, note = load_image(tmp_path / "big.png", 69, recipe=None)
    assert np.array_equal(big, image), "a 3x box downscale of 3x-repeated pixels is exact"
    assert "no cutout recipe" in note
    wide = np.zeros((69, 69 + 40, 3), np.uint8)
    wide[:, 20:89] = image  # a wide picture with the galaxy in its middle
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert np.array_equal(load_image(tmp_path / "wide.png", 69)[0], image), "centre-cropped to a square"


def save(image, fmt="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    buffer.seek(0)
    return buffer


@pytest.fixture
def galaxy():
    """A smooth colour gradient with a bright centre: pixels whose conversions can be predicted."""
    y, x = np.mgrid[0:64, 0:64]
    r = np.hypot(x - 32, y - 32)
    rgb = np.stack([255 - 3 * r, 128 + x, 4 * y], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def test_greyscale_palette_and_cmyk_images_give_their_colours(galaxy):
    rgb = np.asarray(galaxy).astype(int)
    grey = np.asarray(galaxy.convert("L")).astype(int)
    assert np.array_equal(np.asarray(read_rgb(save(galaxy.convert("L")))), np.repeat(grey[..., None], 3, -1))
    palette = galaxy.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    assert np.abs(np.asarray(read_rgb(save(palette))).astype(int) - rgb).mean() < 6
    cmyk = np.asarray(read_rgb(save(galaxy.convert("CMYK"), "JPEG", quality=95))).astype(int)
    assert np.abs(cmyk - rgb).mean() < 6


def test_sixteen_bit_images_are_scaled_not_clipped(galaxy):
    grey8 = np.asarray(galaxy.convert("L"))
    grey16 = Image.fromarray(grey8.astype(np.uint16) * 257)  # the same picture at 16 bits
    pixels = np.asarray(read_rgb(save(grey16)))
    assert pixels.dtype == np.uint8 and np.array_equal(pixels[..., 0], grey8), "not saturated white"
    assert np.array_equal(pixels, np.asarray(Image.fromarray(grey8).convert("RGB")))


def test_transparency_is_laid_over_black_sky(galaxy):
    rgba = galaxy.convert("RGBA")
    alpha = np.zeros((64, 64), np.uint8)
    alpha[16:48, 16:48] = 255
    rgba.putalpha(Image.fromarray(alpha))
    pixels = np.asarray(read_rgb(save(rgba)))
    assert pixels[:16].max() == 0, "transparent pixels are empty (black) sky"
    assert np.array_equal(pixels[16:48, 16:48], np.asarray(galaxy)[16:48, 16:48])


@pytest.mark.parametrize("content, words", [(b"", "not an image"), (b"not an image", "not an image"),
                                            ("truncated", "cannot read it"), (None, "no such file")])
def test_unusable_files_name_the_file(tmp_path, galaxy, content, words):
    path = tmp_path / "galaxy.png"
    if content == "truncated":
        content = save(galaxy).getvalue()[:400]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GalaxyClassError, match=f"galaxy.png: .*{words}"):
        read_rgb(path)


def test_a_run_records_its_recipe(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert CutoutRecipe.from_value(config["cutout"], "config.json") == DEV_RECIPE


def test_predict_on_raw_jpegs_agrees_with_the_model_on_the_files_rows(capsys, pretrained_run, dev_file, dev_jpegs):
    paths, stored, _ = dev_rows(dev_file, dev_jpegs)
    model, config, _ = load_run(pretrained_run)
    assert run_recipe(config) == DEV_RECIPE
    on_rows = predict_proba(model, stored).argmax(1)
    assert len(np.unique(on_rows)) > 1, "a model that gives every galaxy one class would agree trivially"

    def predicted(*options):
        assert main(["predict", str(pretrained_run), *map(str, paths), "--json", *options]) == 0
        out, err = capsys.readouterr()
        names = [r["class"] for r in json.loads(out)]
        return np.array([config.class_names.index(n) for n in names]), err

    on_jpegs, notes = predicted()
    assert np.mean(on_jpegs == on_rows) >= 0.95
    assert "120 images: cut as the training images were" in notes
    whole, notes = predicted("--crop-fraction", "1.0")
    assert "as asked" in notes
    assert np.mean(whole == on_rows) < np.mean(on_jpegs == on_rows), "the old whole-image shrink disagrees more"


def test_predict_with_a_bad_crop_fraction_is_an_error(capsys, tiny_run, sample_file, tmp_path):
    Image.new("RGB", (69, 69)).save(tmp_path / "g.png")
    with pytest.raises(SystemExit) as exit_code:
        main(["predict", str(tiny_run), str(tmp_path / "g.png"), "--crop-fraction", "2"])
    assert exit_code.value.code == 2 and "crop fraction" in capsys.readouterr().err
