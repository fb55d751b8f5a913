import numpy as np
import pytest
from matplotlib.figure import Figure

from galaxy_class.batches import dihedral
from galaxy_class.evaluate import metrics
from galaxy_class.predict import predict_proba
from galaxy_class.plots import class_counts_figure, confusion_figure, galaxy_grid, history_figure


def test_metrics_on_known_predictions():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 1, 0]]
    m = metrics(labels, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows true, columns predicted
    assert m["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["f1"] == 0.0 and m["per_class"]["c"]["support"] == 1
    f1_a, f1_b = 2 / 3, 0.8  # a: p=2/3 r=2/3; b: p=2/3 r=1
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + 0) / 3)


def test_tta_averages_the_model_over_the_eight_views():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    w = rng.normal(size=(8 * 8 * 3, 3))

    def model(x, training=False):  # a deliberately orientation-sensitive "model"
        logits = np.asarray(x, dtype=float).reshape(len(x), -1) @ w / 1e3
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    expected = np.mean([model(dihedral(images, k)) for k in range(8)], axis=0)
    np.testing.assert_allclose(predict_proba(model, images, tta=True), expected, rtol=1e-6)
    np.testing.assert_allclose(predict_proba(model, images), model(images), rtol=1e-6)
    assert not np.allclose(expected, model(images))


def test_large_arrays_go_through_the_model_a_batch_at_a_time_with_the_same_answers():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    w = rng.normal(size=(8 * 8 * 3, 3))
    seen = []

    def model(x, training=False):
        seen.append(len(x))
        logits = np.asarray(x, dtype=float).reshape(len(x), -1) @ w / 1e3
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    expected = np.mean([model(dihedral(images, k)) for k in range(8)], axis=0)
    seen.clear()
    np.testing.assert_allclose(predict_proba(model, images, tta=True, batch_size=128), expected, rtol=1e-12)
    assert max(seen) == 128 and sum(seen) == 8 * 300 and sorted(set(seen)) == [44, 128]


def test_figures_are_figures_and_save_as_png(tmp_path):
    history = {"loss": [1, 0.8, 0.6], "val_loss": [1.1, 0.9, 0.8], "accuracy": [0.5, 0.6, 0.7],
               "val_accuracy": [0.4, 0.5, 0.6], "epochs_stage1": 2, "epochs_stage2": 1, "fine_tune_start_epoch": 2}
    images = np.zeros((5, 8, 8, 3), np.uint8)
    figures = {
        "history": history_figure(history, "m"),
        "confusion": confusion_figure([[5, 1], [0, 3]], ["a", "b"]),
        "grid": galaxy_grid(images, [0, 1, 0, 1, 0], ["a", "b"], predictions=[0, 0, 0, 1, 1], ncols=3),
        "counts": class_counts_figure(["a", "b"], [3, 2]),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    ax = figures["history"].axes[0]
    assert [line.get_label() for line in ax.get_lines()][-1] == "fine-tuning starts"
    heat = figures["confusion"].axes[1]
    assert [t.get_text() for t in heat.texts] == ["0.83", "0.17", "0.00", "1.00"]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["a", "b"]
    titles = [ax.get_title() for ax in figures["grid"].axes[:5]]
    assert titles[1] == "true: b\npred: a" and figures["grid"].axes[1].title.get_color() == "red"
