"""The one validation vocabulary: TypeError for a wrong type (bool is never a number), ValueError
for a wrong value, and a message that names the argument and the range it must lie in."""

import pytest
import torch

import torchstn as stn

from torchstn._validation import check_int, check_number, check_positive


@pytest.mark.parametrize("check", [check_int, check_number, check_positive])
def test_a_bool_is_not_a_number(check):
    with pytest.raises(TypeError, match="flag must be an? (int|number), got bool"):
        check("flag", True)


@pytest.mark.parametrize(
    ("low", "high", "value", "message"),
    [
        (1, None, 0, "n must be >= 1, got 0"),
        (None, 3, 4, "n must be <= 3, got 4"),
        (1, 3, 0, r"n must be in \[1, 3\], got 0"),
    ],
)
def test_bounds_read_the_same_for_ints_and_numbers(low, high, value, message):
    with pytest.raises(ValueError, match=message):
        check_int("n", value, low, high)
    with pytest.raises(ValueError, match=message.replace(f"got {value}", f"got {float(value)}")):
        check_number("n", value, low, high)


def test_numbers_are_finite_and_returned_as_floats():
    assert check_number("x", 2) == 2.0 and isinstance(check_number("x", 2), float)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="x must be a finite number"):
            check_number("x", bad, 0.0)
    with pytest.raises(TypeError, match="x must be an int, got float"):
        check_int("x", 2.0)


def test_a_numpy_type_is_named_with_its_module():
    """NumPy 2 names its bool ``bool``: the error read "must be a bool, got bool"."""
    import numpy as np

    from torchstn._validation import check_bool

    with pytest.raises(TypeError, match=r"flag must be a bool, got numpy\.bool"):
        check_bool("flag", np.bool_(True))
    with pytest.raises(TypeError, match=r"x must be an int, got numpy\.float32"):
        check_int("x", np.float32(2))


def test_an_integer_option_takes_numpy_and_0d_tensor_integers_as_sizes_do():
    """``create_model("fcn", in_channels=np.int64(1))`` built until in_channels was checked by check_int,
    which took Python ints only, while sizes took any integer with ``__index__``."""
    import numpy as np

    for value in (3, np.int64(3), np.uint8(3), torch.tensor(3)):
        checked = check_int("n", value, 1)
        assert checked == 3 and type(checked) is int
    for bad in (True, np.bool_(True), torch.tensor(3.0), torch.tensor([3]), torch.tensor(True)):
        with pytest.raises(TypeError, match="n must be an int"):
            check_int("n", bad)
    with pytest.raises(ValueError, match=r"n must be >= 1, got 0"):
        check_int("n", np.int64(0), 1)
    assert stn.create_model("fcn", in_channels=np.int64(1))(torch.rand(2, 1, 28, 28)).shape == (2, 10)
