"""Both notebooks run top to bottom in quick mode (two batches an epoch) on the bundled sample."""

import json

import papermill
import pytest

from conftest import ROOT
from galaxy_class.quiet import NOISE


@pytest.mark.parametrize("arch", ["mobilenet", "squeezenet"])
def test_notebook_runs_top_to_bottom_in_quick_mode(arch, tmp_path):
    out = tmp_path / f"{arch}.ipynb"
    papermill.execute_notebook(
        ROOT / f"galaxy_class_{arch}.ipynb", out, cwd=ROOT, kernel_name="python3", progress_bar=False,
        parameters=dict(dataset="sample", weights="imagenet", image_size=64, quick=True, epochs=1,
                        fine_tune_epochs=1, models_dir=str(tmp_path / "models"), figures_dir=str(tmp_path / "figures")),
    )
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4, "figures are shown inline"
    assert sum("image/jpeg" in o.get("data", {}) for o in outputs) >= 4, "galaxy grids are shown as JPEG"
    assert len(out.read_bytes()) < 1_000_000, "a notebook GitHub renders quickly"
    for name in ["history", "confusion_matrix", "predictions"]:
        assert (tmp_path / "figures" / f"{arch}_{name}.png").stat().st_size > 5_000
    assert (tmp_path / "models" / f"{arch}_sample" / "model.keras").is_file()


@pytest.mark.parametrize("arch", ["mobilenet", "squeezenet"])
def test_committed_notebook_is_executed_and_has_a_parameters_cell(arch):
    nb = json.loads((ROOT / f"galaxy_class_{arch}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "google.colab" in "".join(code[0]["source"]), "the first cell sets up Colab"
    assert any("parameters" in c["metadata"].get("tags", []) for c in code)
    assert all(c["execution_count"] for c in code), "committed executed top to bottom"
    assert not [o for c in code for o in c.get("outputs", []) if o["output_type"] == "error"]
    parameters = "".join(next(c["source"] for c in code if "parameters" in c["metadata"].get("tags", [])))
    for name in ["dataset", "alpha", "batch_size", "quick", "overwrite", "drive"]:
        assert f"\n{name} = " in f"\n{parameters}", f"{name} in the parameters cell"
    streams = [o for c in code for o in c.get("outputs", []) if o["output_type"] == "stream"]
    noisy = [line for o in streams for line in "".join(o["text"]).splitlines()
             if NOISE.match(line.encode()) or "INFO:tensorflow" in line or "Assets written to" in line]
    assert not noisy, f"TensorFlow log noise in the committed outputs: {noisy[:3]}"
    headings = [line for c in nb["cells"] if c["cell_type"] == "markdown" for line in "".join(c["source"]).splitlines()]
    assert "## Results" in headings and "## Classify your own galaxies: raw survey cutouts" in headings


def test_a_second_run_with_the_same_settings_shows_the_finished_run(tmp_path):
    settings = dict(dataset="sample", weights="none", image_size=32, quick=True, epochs=1, fine_tune_epochs=0,
                    models_dir=str(tmp_path / "models"), figures_dir=str(tmp_path / "figures"))
    nb = ROOT / "galaxy_class_squeezenet.ipynb"
    for out in ("first.ipynb", "second.ipynb"):
        papermill.execute_notebook(nb, tmp_path / out, cwd=ROOT, kernel_name="python3", progress_bar=False,
                                   parameters=settings)
    first, second = (json.dumps(json.loads((tmp_path / out).read_text())["cells"]) for out in ("first.ipynb",
                                                                                             "second.ipynb"))
    assert "head epoch  1/1" in first and "loaded, not retrained" not in first
    assert "loaded, not retrained" in second and "epoch  1/1" not in second
