"""Specification of mixed-precision training: when it is chosen, what it computes in, what a run saves."""

import json

import keras
import numpy as np
import pytest

from galaxy_class import GalaxyClassError
from galaxy_class.data import open_galaxy10, read_images
from galaxy_class.models import build_model, choose_precision
from galaxy_class.runs import load_run, run_state
from galaxy_class.train import train

T4, P100 = (7, 5), (6, 0)
AMX, AVX512 = {"avx512f", "amx_bf16"}, {"avx512f", "avx512_bf16"}


@pytest.mark.parametrize("arch, gpus, flags, policy", [
    ("mobilenet", [T4], set(), "mixed_float16"),
    ("squeezenet", [T4, T4], AMX, "mixed_float16"),
    ("squeezenet", [P100], AMX, "float32"),         # no float16 tensor cores: mixed_float16 would be slower
    ("squeezenet", [], AMX, "mixed_bfloat16"),
    ("squeezenet", [], AVX512, "mixed_bfloat16"),
    ("squeezenet", [], {"avx512f", "avx2"}, "float32"),  # bfloat16 emulated: slower
    ("mobilenet", [], AMX, "float32"),               # depthwise convolutions measured slower in bfloat16
    ("mobilenet_v2", [], AMX, "float32"),
])
def test_auto_precision_follows_the_hardware_and_the_architecture(arch, gpus, flags, policy):
    assert choose_precision("auto", arch, gpu_capabilities=gpus, cpu_flags=flags)[0] == policy


def test_a_precision_asked_for_is_kept_and_an_unknown_one_refused():
    assert choose_precision("mixed_float16", "mobilenet", [], set()) == ("mixed_float16", "as asked")
    assert choose_precision("float32", "squeezenet", [T4], AMX) == ("float32", "as asked")
    with pytest.raises(GalaxyClassError, match="unknown precision 'bf16': choose one of auto, float32, "):
        choose_precision("bf16", "squeezenet")
    with pytest.raises(GalaxyClassError, match="unknown precision 'auto'"):
        build_model("squeezenet", 4, (32, 32, 3), weights="none", dtype_policy="auto")


@pytest.mark.parametrize("policy, compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_mixed_models_compute_in_16_bits_with_float32_weights_and_a_float32_softmax(policy, compute):
    model = build_model("squeezenet", 4, (32, 32, 3), image_size=32, weights="none", dtype_policy=policy)
    conv = model.get_layer("base").get_layer("fire9_expand3x3")
    assert conv.compute_dtype == compute and conv.variable_dtype == "float32"
    probabilities = model(np.zeros((2, 32, 32, 3), np.uint8))
    assert probabilities.dtype == "float32" and model.get_layer("probabilities").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32", "the global policy is left as it was"
    assert build_model("mobilenet", 4, (32, 32, 3), image_size=32, weights="none").dtype_policy.name == "float32"


def test_a_bfloat16_run_records_its_precision_and_saves_a_float32_model(tmp_path, tiny_config, sample_file):
    run = tmp_path / "run"
    metrics = train(tiny_config.replace(model="squeezenet", precision="mixed_bfloat16"), run, verbose=0)
    config = json.loads((run / "config.json").read_text())
    assert (config["precision"], config["dtype_policy"]) == ("mixed_bfloat16", "mixed_bfloat16")
    model, _, split = load_run(run)
    assert {layer.dtype_policy.name for layer in model._flatten_layers()} == {"float32"}
    # The metrics were measured on the model that was saved.
    from galaxy_class.evaluate import evaluate

    g = open_galaxy10(sample_file)
    assert evaluate(model, g, split["test"], config["class_names"])["confusion_matrix"] == metrics["confusion_matrix"]
    from galaxy_class.gradcam import gradcam

    heatmaps = gradcam(model, read_images(g, split["test"][:2]))
    assert heatmaps.shape == (2, 69, 69) and np.isfinite(heatmaps).all()


def test_a_float16_run_paused_after_stage1_resumes_in_float16(tmp_path, tiny_config, monkeypatch):
    import galaxy_class.train

    run = tmp_path / "run"
    config = tiny_config.replace(precision="auto")
    with monkeypatch.context() as patch:  # started where auto chooses float16 (a CUDA GPU)
        patch.setattr(galaxy_class.train, "choose_precision", lambda precision, model: ("mixed_float16", "a GPU"))
        assert train(config, run, verbose=0, stop_after="stage1") is None
    # Resumed where auto chooses float32 (this CPU): the run keeps the precision it started in.
    metrics = train(config, run, verbose=0)
    assert run_state(run) == "finished" and metrics["n"] > 0
    assert json.loads((run / "config.json").read_text())["dtype_policy"] == "mixed_float16"
