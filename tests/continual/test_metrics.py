"""Lifelong metrics against a hand-computed accuracy matrix."""

import numpy as np
import pytest

from metajax import continual as C

# Rows: init, after task 1, 2, 3. Columns: tasks 1..3.
R = np.array(
    [
        [0.1, 0.2, 0.1],
        [0.9, 0.3, 0.2],
        [0.7, 0.8, 0.4],
        [0.6, 0.7, 0.9],
    ]
)


def test_matrix_metrics_by_hand():
    assert C.average_accuracy(R) == pytest.approx((0.6 + 0.7 + 0.9) / 3)
    assert C.backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 2)
    assert C.backward_transfer(R, average="T") == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 3)
    assert C.forward_transfer(R) == pytest.approx(((0.3 - 0.2) + (0.4 - 0.1)) / 2)
    assert C.learning_accuracy(R) == pytest.approx((0.9 + 0.8 + 0.9) / 3)
    # Chaudhry et al.: max over rows 1..T-1, never the random-init row.
    assert C.forgetting(R) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7)) / 2)
    assert C.summarize(R)["acc"] == pytest.approx(C.average_accuracy(R))


def test_forgetting_ignores_the_random_init_row():
    R2 = R.copy()
    R2[0, 0] = 1.0
    assert C.forgetting(R2) == pytest.approx(C.forgetting(R))


def test_single_task():
    one = np.array([[0.1], [0.8]])
    assert C.backward_transfer(one) == 0.0 and C.forward_transfer(one) == 0.0 and C.forgetting(one) == 0.0
    assert C.average_accuracy(one) == pytest.approx(0.8)


def test_online_cumulative_accuracy():
    np.testing.assert_allclose(C.online_cumulative_accuracy([1, 0, 1, 1]), [1, 0.5, 2 / 3, 0.75])
    np.testing.assert_allclose(C.online_cumulative_accuracy([[1, 0], [1, 1]]), [0.5, 0.75])


@pytest.mark.parametrize(
    ("bad", "message"),
    [(np.zeros((3, 3)), r"shape \[T \+ 1, T\]"), (np.array([[0.1], [np.nan]]), r"R\[1, 0\] = nan")],
)
def test_bad_matrix_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        C.average_accuracy(bad)


def test_bad_average_convention():
    with pytest.raises(ValueError, match="average must be one of"):
        C.backward_transfer(R, average="T+1")


def test_heatmap_is_written(tmp_path):
    path = tmp_path / "R.png"
    fig = C.plot_accuracy_matrix(R, path, title="demo")
    assert path.stat().st_size > 1000
    assert fig.axes[0].get_title() == "demo"
