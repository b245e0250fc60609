"""Lifelong metrics against values computed by hand from their definitions."""

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
    # Final row R[3] = [0.6, 0.7, 0.9]; just after learning: R[1, 0], R[2, 1], R[3, 2] = 0.9, 0.8, 0.9.
    assert C.average_accuracy(R) == pytest.approx(0.7333333333333333)  # (0.6 + 0.7 + 0.9) / 3
    assert C.backward_transfer(R) == pytest.approx(-0.2)  # ((0.6 - 0.9) + (0.7 - 0.8)) / 2
    assert C.backward_transfer(R, average="T") == pytest.approx(-0.13333333333333333)  # the same sum / 3
    assert C.forward_transfer(R) == pytest.approx(0.2)  # ((0.3 - 0.2) + (0.4 - 0.1)) / 2
    assert C.forward_transfer(R, average="T") == pytest.approx(0.13333333333333333)  # the same sum / 3
    assert C.learning_accuracy(R) == pytest.approx(0.8666666666666667)  # (0.9 + 0.8 + 0.9) / 3
    assert C.forgetting(R) == pytest.approx(0.2)  # ((0.9 - 0.6) + (0.8 - 0.7)) / 2
    assert C.summarize(R) == pytest.approx(
        {"acc": 0.7333333333333333, "bwt": -0.2, "fwt": 0.2, "learning_accuracy": 0.8666666666666667, "forgetting": 0.2}
    )
    assert C.summarize(R, average="T") == pytest.approx(
        {
            "acc": 0.7333333333333333,
            "bwt": -0.13333333333333333,
            "fwt": 0.13333333333333333,
            "learning_accuracy": 0.8666666666666667,
            "forgetting": 0.2,
        }
    )


# A matrix on which the conventions give different numbers: task 1 is high at the random init
# (0.95), improves after task 2 is learned (0.5 -> 0.8); task 2 is solved better zero-shot (0.6)
# than right after learning it (0.4) and ends above both (0.9).
R_MIXED = np.array(
    [
        [0.95, 0.1, 0.2],
        [0.5, 0.6, 0.3],
        [0.8, 0.4, 0.5],
        [0.7, 0.9, 0.6],
    ]
)


def test_conventions_on_a_matrix_where_they_differ():
    assert C.average_accuracy(R_MIXED) == pytest.approx(0.7333333333333333)  # (0.7 + 0.9 + 0.6) / 3
    assert C.backward_transfer(R_MIXED) == pytest.approx(0.35)  # ((0.7 - 0.5) + (0.9 - 0.4)) / 2
    assert C.backward_transfer(R_MIXED, average="T") == pytest.approx(0.23333333333333334)  # 0.7 / 3
    # FWT uses b = R[0]: ((R[1, 1] - 0.1) + (R[2, 2] - 0.2)) / 2 = ((0.6 - 0.1) + (0.5 - 0.2)) / 2.
    assert C.forward_transfer(R_MIXED) == pytest.approx(0.4)
    assert C.forward_transfer(R_MIXED, average="T") == pytest.approx(0.26666666666666666)  # 0.8 / 3
    assert C.learning_accuracy(R_MIXED) == pytest.approx(0.5)  # (0.5 + 0.4 + 0.6) / 3
    # Chaudhry et al. 2018: task 1 max(0.5, 0.8) - 0.7 = 0.1; task 2 max(0.6, 0.4) - 0.9 = -0.3.
    # The other readings give: drop from right after learning (0.5 - 0.7, 0.4 - 0.9) -> -0.35;
    # max including the random-init row (0.95) -> -0.025; max including the final row -> 0.05;
    # max only over rows from learning on (no zero-shot row) -> -0.2.
    assert C.forgetting(R_MIXED) == pytest.approx(-0.1)


def test_forgetting_ignores_the_random_init_row():
    R2 = R.copy()
    R2[0, 0] = 1.0  # above every later accuracy of task 1
    assert C.forgetting(R2) == pytest.approx(0.2)  # unchanged: ((0.9 - 0.6) + (0.8 - 0.7)) / 2
    R2[0, 1] = 1.0
    assert C.forgetting(R2) == pytest.approx(0.2)
    assert C.forward_transfer(R2) == pytest.approx(-0.2)  # FWT does read row 0: ((0.3 - 1.0) + (0.4 - 0.1)) / 2


def test_single_task():
    one = np.array([[0.1], [0.8]])
    assert C.backward_transfer(one) == 0.0 and C.forward_transfer(one) == 0.0 and C.forgetting(one) == 0.0
    assert C.backward_transfer(one, average="T") == 0.0 and C.forward_transfer(one, average="T") == 0.0
    assert C.average_accuracy(one) == pytest.approx(0.8)
    assert C.learning_accuracy(one) == pytest.approx(0.8)


def test_online_cumulative_accuracy_by_hand():
    np.testing.assert_allclose(C.online_cumulative_accuracy([1, 0, 1, 1]), [1, 0.5, 2 / 3, 0.75])
    np.testing.assert_allclose(C.online_cumulative_accuracy([0, 0, 1]), [0, 0, 1 / 3])
    np.testing.assert_allclose(C.online_cumulative_accuracy([0.5]), [0.5])
    # [steps, batch]: each step's batch accuracy first (0.5, 1.0; then 0.25, 1.0, 0.5), then the running mean.
    np.testing.assert_allclose(C.online_cumulative_accuracy([[1, 0], [1, 1]]), [0.5, 0.75])
    np.testing.assert_allclose(
        C.online_cumulative_accuracy([[1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]]), [0.25, 0.625, 0.5833333333333334]
    )


def _running_mean_loop(per_step):
    out, total = [], 0.0
    for t, value in enumerate(per_step):
        total += value
        out.append(total / (t + 1))
    return out


def test_online_cumulative_accuracy_matches_a_python_loop():
    rng = np.random.default_rng(0)
    accuracies = rng.uniform(size=50).tolist()
    np.testing.assert_allclose(C.online_cumulative_accuracy(accuracies), _running_mean_loop(accuracies), rtol=1e-12)
    correct = rng.integers(0, 2, size=(40, 7)).tolist()
    per_step = [sum(row) / len(row) for row in correct]
    np.testing.assert_allclose(C.online_cumulative_accuracy(correct), _running_mean_loop(per_step), rtol=1e-12)


@pytest.mark.parametrize("bad", [[], 0.5])
def test_online_cumulative_accuracy_needs_steps(bad):
    with pytest.raises(ValueError, match="leading steps axis of size >= 1"):
        C.online_cumulative_accuracy(bad)


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
