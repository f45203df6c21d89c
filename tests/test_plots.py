"""Plots that benchmarks draw: they are written and show what they are given."""

import matplotlib.image as mpimg
import numpy as np

from xtalloop.plots import plot_learning_curve


def rows(label: str, scale: float) -> list[dict]:
    return [{"model": label, "n_train_structures": n, "energy_mae": scale / n,
             "force_mae": 2 * scale / n, "f1": 1 - 1 / n} for n in (5, 10, 20)]


def test_learning_curve_draws_one_curve_per_model_and_pretrained_baselines(tmp_path):
    baseline = {"model": "CHGNet (before)", "n_train_structures": 0, "energy_mae": 50.0,
                "force_mae": 80.0, "f1": None}
    one = plot_learning_curve(rows("trained", 400) + [baseline], tmp_path / "one.png")
    two = plot_learning_curve(rows("trained", 400) + rows("fine-tuned", 100) + [baseline],
                              tmp_path / "two.png")
    first, second = mpimg.imread(one), mpimg.imread(two)
    assert first.shape == second.shape and first.shape[1] > 1000
    assert not np.array_equal(first, second)  # the fine-tuned curve is drawn
