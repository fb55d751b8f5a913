"""What the notebooks lean on: quiet outputs, scratch folders in quick mode, and a results section that adds up."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from galaxy_class import notebook
from galaxy_class.data import open_galaxy10
from galaxy_class.errors import GalaxyClassError
from galaxy_class.runs import load_run


def test_native_log_lines_are_dropped_and_everything_else_passes():
    script = textwrap.dedent('''
        import logging, os, sys, time
        from galaxy_class.quiet import hide_native_logs
        hide_native_logs()
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 00:00:1795618144.407888   16804 port.cc:153] oneDNN custom operations are on.\\n")
        os.write(2, b"E0000 00:00:1795618147.351161   16804 cuda_platform.cc:52] failed call to cuInit\\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
        os.write(2, b"a real error: keep me\\nTraceback (most recent call last):\\n")
        logging.basicConfig()
        logging.getLogger("tensorflow").info("Assets written to: /tmp/x")
        logging.getLogger("tensorflow").error("a TensorFlow error: keep me too")
        time.sleep(0.5)
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["a real error: keep me", "Traceback (most recent call last):",
                                        "ERROR:tensorflow:a TensorFlow error: keep me too"]


def test_quick_mode_writes_to_scratch_folders_never_the_committed_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert notebook.folders(quick=True) == (Path("runs/quick/models"), Path("runs/quick/figures"))
    assert notebook.folders() == (Path("models"), Path("figures"))
    assert notebook.folders("m", "f", quick=True) == (Path("m"), Path("f")), "explicit folders are used as given"
    assert (tmp_path / "runs" / "quick" / "figures").is_dir()


def test_drive_is_refused_off_colab():
    with pytest.raises(GalaxyClassError, match="Colab only"):
        notebook.folders(drive=True)


def test_majority_baseline_is_what_always_answering_the_commonest_class_scores():
    from sklearn.metrics import accuracy_score, f1_score

    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    always = np.zeros_like(labels)
    accuracy, macro_f1 = notebook.majority_baseline(labels, 3)
    assert accuracy == pytest.approx(accuracy_score(labels, always))
    assert macro_f1 == pytest.approx(f1_score(labels, always, average="macro", zero_division=0))


def test_results_section_states_the_runs_numbers_and_its_weakest_class(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    _, config, split = load_run(tiny_run)
    text = notebook.results_markdown(metrics, open_galaxy10(config.data_path).labels[split["test"]], "sample")
    assert f"**{metrics['accuracy']:.3f}**" in text and f"**{metrics['macro_f1']:.3f}**" in text
    assert f"{len(split['test'])} test galaxies" in text and "not Galaxy10" in text
    for name, scores in metrics["per_class"].items():
        assert f"| {name} | {scores['support']} | {scores['recall']:.2f} |" in text
    assert "The weakest class is **" in text


def test_the_data_note_names_the_data_actually_used_and_how_to_get_galaxy10(sample_file):
    g = open_galaxy10(sample_file)
    note = str(notebook.data_note("sample", g))
    assert note.startswith("**The outputs below come from the bundled sample**: 1,536 real SDSS galaxies")
    assert "4 classes (Elliptical, Spiral, Edge-on, Merger)" in note and "not Galaxy10" in note
    assert 'dataset = "galaxy10_decals"' in note
    own = str(notebook.data_note(str(sample_file), g))
    assert f"`{sample_file.name}`" in own and "not Galaxy10" in own


def test_rendered_tables_carry_html_that_every_viewer_shows():
    text = "**Bold** and `x < y`\n\n| class | n |\n|---|---:|\n| Merger | **4** |"
    shown = notebook.Rendered(text)
    assert shown._repr_markdown_() == text
    assert shown._repr_html_() == (
        "<p><strong>Bold</strong> and <code>x &lt; y</code></p>\n<table>\n"
        '<tr><th style="text-align: left">class</th><th style="text-align: right">n</th></tr>\n'
        '<tr><td style="text-align: left">Merger</td><td style="text-align: right"><strong>4</strong></td></tr>\n'
        "</table>")


def test_galaxy_grids_are_shown_as_jpeg_a_fraction_of_the_png(sample_file):
    import io

    from galaxy_class import plots
    from galaxy_class.data import read_images

    g = open_galaxy10(sample_file)
    fig = plots.galaxy_grid(read_images(g, list(range(24))), g.labels[:24], g.class_names, ncols=6)
    shown = notebook.as_jpeg(fig)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    assert shown.format == "jpeg" and shown.data[:3] == b"\xff\xd8\xff"
    assert len(shown.data) < len(png.getvalue()) / 3
