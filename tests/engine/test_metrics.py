"""ECE and NLL against hand-computed examples and their defining properties."""

import math

import pytest
import torch

from torchstn.engine.metrics import calibration_bins, expected_calibration_error, negative_log_likelihood


def test_ece_hand_computed_example(dtype):
    # five predictions, three bins (0, 1/3], (1/3, 2/3], (2/3, 1]
    probs = torch.tensor(
        [
            [0.90, 0.05, 0.05],  # conf 0.90, predicts 0, label 0: right   -> bin 3
            [0.20, 0.70, 0.10],  # conf 0.70, predicts 1, label 2: wrong   -> bin 3
            [0.50, 0.30, 0.20],  # conf 0.50, predicts 0, label 0: right   -> bin 2
            [0.40, 0.35, 0.25],  # conf 0.40, predicts 0, label 1: wrong   -> bin 2
            [0.34, 0.33, 0.33],  # conf 0.34, predicts 0, label 0: right   -> bin 2
        ],
        dtype=dtype,
    )
    labels = torch.tensor([0, 2, 0, 1, 0])
    # bin 2: conf (0.5 + 0.4 + 0.34) / 3 = 0.41333, acc 2/3; bin 3: conf 0.8, acc 1/2
    # ECE = 3/5 * |2/3 - 0.41333| + 2/5 * |1/2 - 0.8| = 0.152 + 0.12 = 0.272
    ece = expected_calibration_error(probs, labels, bins=3)
    assert ece.dtype == dtype
    assert math.isclose(float(ece), 0.272, abs_tol=1e-6)
    conf, acc, count = calibration_bins(probs, labels, bins=3)
    torch.testing.assert_close(count, torch.tensor([0.0, 3.0, 2.0], dtype=dtype))
    torch.testing.assert_close(acc, torch.tensor([0.0, 2 / 3, 0.5], dtype=dtype))
    torch.testing.assert_close(conf, torch.tensor([0.0, 1.24 / 3, 0.8], dtype=dtype))


def test_ece_bin_edges_belong_to_the_lower_bin():
    # confidence exactly 0.6 with 5 bins sits in (0.4, 0.6], not (0.6, 0.8]
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    conf, _, count = calibration_bins(probs, torch.tensor([0, 1]), bins=5)
    assert count.tolist() == [0, 0, 2, 0, 0]
    assert math.isclose(float(expected_calibration_error(probs, torch.tensor([0, 1]), bins=5)), 0.1, abs_tol=1e-6)


def test_ece_is_zero_when_calibrated_and_one_when_confidently_wrong():
    # 4 predictions at confidence 0.75, 3 of them right: perfectly calibrated
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert float(expected_calibration_error(probs, torch.tensor([0, 0, 0, 1]))) == pytest.approx(0.0, abs=1e-7)
    onehot = torch.eye(3)[[0, 1, 2]]
    assert float(expected_calibration_error(onehot, torch.tensor([1, 2, 0]))) == pytest.approx(1.0)


def test_nll_hand_computed_example(dtype):
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]], dtype=dtype)
    nll = negative_log_likelihood(probs, torch.tensor([1, 1]))
    assert nll.dtype == dtype
    assert math.isclose(float(nll), (math.log(4) - math.log(0.8)) / 2, rel_tol=1e-6)
    # a zero probability on the true class costs a large but finite amount
    assert math.isfinite(float(negative_log_likelihood(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))))


def test_nll_equals_cross_entropy_of_log_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(50, 7)
    labels = torch.randint(0, 7, (50,))
    expected = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(negative_log_likelihood(logits.softmax(-1), labels), expected)


def test_bad_inputs_are_named():
    probs = torch.full((3, 4), 0.25)
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(probs[0], torch.tensor([0]))
    with pytest.raises(TypeError, match="labels"):
        negative_log_likelihood(probs, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="batch size"):
        negative_log_likelihood(probs, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        expected_calibration_error(probs, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="bins must be >= 1, got 0"):
        expected_calibration_error(probs, torch.tensor([0, 1, 2]), bins=0)
    with pytest.raises(TypeError, match="bins must be an int, got float"):
        expected_calibration_error(probs, torch.tensor([0, 1, 2]), bins=15.0)


def test_logits_and_log_probabilities_are_refused_and_a_diverged_row_gives_nan():
    """The metrics take probabilities; logits gave an "ECE" of 3.5 and a negative NLL, and a
    P-STN's log-probabilities an ECE of 1.69, without a word. A row that is not finite (a
    diverged model) is still measured, as NaN, not refused: a training run records it."""
    logits = torch.tensor([[3.0, -1.0], [5.0, 2.0]])
    labels = torch.tensor([0, 1])
    for wrong in (logits, logits.log_softmax(1)):
        for metric in (expected_calibration_error, negative_log_likelihood):
            with pytest.raises(ValueError, match="probs must be probabilities .* logits or log-probabilities"):
                metric(wrong, labels)
    probs = logits.softmax(1)
    assert 0 <= expected_calibration_error(probs, labels) <= 1 and negative_log_likelihood(probs, labels) > 0
    assert expected_calibration_error(probs.half(), labels) >= 0  # float16 rounding is not refused
    diverged = torch.cat([probs, torch.full((1, 2), float("nan"))])
    assert math.isnan(negative_log_likelihood(diverged, torch.tensor([0, 1, 0])))


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_probabilities_are_binned_as_float32_ones(low):
    """A bfloat16 bin count stopped at 256 (256 + 1 rounds to 256), a float16 one at 2048: 1,000
    right answers at confidence 0.9 gave an ECE of 0 instead of |1 - 0.9| = 0.1."""
    probs = torch.tensor([[0.9, 0.1]]).repeat(3000, 1)
    labels = torch.zeros(3000, dtype=torch.long)
    conf, acc, count = calibration_bins(probs.to(low), labels)
    assert count.sum().item() == 3000 and count.dtype == torch.float32
    expected = abs(1 - probs.to(low)[0, 0].item())  # (the input's own rounding of 0.9)
    assert math.isclose(float(expected_calibration_error(probs.to(low), labels)), expected, rel_tol=1e-6)



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bins", [10, 15])
def test_every_confidence_near_an_edge_lands_in_its_exact_bin(dtype, bins):
    """e_(m-1) < p <= e_m with e_m = m/M as the dtype holds it, decided exactly (Fractions) for every
    value of the dtype within a few units in the last place of an edge: the product p * M rounded
    in the input's dtype had put bfloat16 0.90234375 into (0.8, 0.9] at 10 bins (bfloat16's 0.9 is
    0.8984375), and float16 and float32 values next to an edge at 10 bins and float16 ones at 15."""
    from fractions import Fraction

    values = set()
    for m in range(bins // 2, bins + 1):  # the confidences of two-class rows: [0.5, 1]
        edge = torch.tensor(m / bins, dtype=dtype)
        for direction in (0.0, 2.0):
            v = edge
            for _ in range(4):
                values.add(float(v))
                v = torch.nextafter(v, torch.tensor(direction, dtype=dtype))
    p = torch.tensor(sorted(v for v in values if 0.5 <= v <= 1), dtype=dtype)
    probs = torch.stack([p, 1 - p], 1)
    _, _, count = calibration_bins(probs, torch.zeros(len(p), dtype=torch.long), bins=bins)
    edges = [Fraction(torch.tensor(m / bins, dtype=dtype).item()) for m in range(1, bins + 1)]
    expected = torch.zeros(bins)
    for v in p.tolist():  # (the values as the dtype holds them, exactly)
        expected[next(m for m, edge in enumerate(edges) if Fraction(v) <= edge)] += 1
    assert count.tolist() == expected.tolist()


def test_misclassified_counts_a_nan_row_as_wrong():
    """argmax takes NaN for the largest value: a diverged model's NaN rows had counted as class 0
    (right for class 0), and a row [nan, -5, 10] labelled 0 as right."""
    from torchstn.engine import evaluate
    from torchstn.engine.metrics import misclassified

    nan = float("nan")
    rows = [[nan, -5.0, 10.0], [nan, nan, nan], [1.0, 3.0, 2.0], [4.0, 3.0, 2.0], [-1.0, float("-inf"), 0.0]]
    logits = torch.tensor(rows)
    labels = torch.tensor([0, 0, 1, 0, 2])
    assert misclassified(logits, labels).tolist() == [True, True, False, False, False]

    class Diverged(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), nan)

    data = torch.utils.data.TensorDataset(torch.zeros(5, 1, 2, 2), torch.tensor([0, 0, 0, 1, 2]))
    result = evaluate(Diverged(), data, device="cpu")
    assert result["error"] == 1.0 and result["per_class_error"] == [1.0, 1.0, 1.0] and math.isnan(result["loss"])
    with pytest.raises(ValueError, match="labels must be class indices in \\[0, 2\\] for logits"):
        misclassified(logits, torch.tensor([0, 0, 1, 0, 3]))
