"""Both notebooks run top to bottom in quick mode (two batches an epoch) on the bundled sample."""

import json

import papermill
import pytest

from conftest import ROOT


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
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5, "figures are shown inline"
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
