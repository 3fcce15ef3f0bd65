"""SamplerOptions: the sampler's options as one validated value, equal to the functional calls."""

import copy
import dataclasses
import pickle
import typing

import pytest
import torch

import torchstn as stn
from torchstn.sampling import _fused, _fused3d, _sample
from torchstn.sampling import BACKEND_CHOICES, BACKENDS, MODES, PADDINGS, Backend, Mode, Padding, SamplerOptions
from torchstn.sampling._sample import _KERNELS

OPTIONS = [
    SamplerOptions(),
    SamplerOptions(mode="nearest", padding="border", align_corners=True, backend="torch"),
    SamplerOptions(mode="bicubic", padding="reflection", backend="auto"),
    SamplerOptions(padding="reflection", align_corners=True, backend="fused"),
    SamplerOptions(mode="nearest", padding="zeros", backend="reference"),
]


def _keywords(options: SamplerOptions) -> dict[str, object]:
    return {"mode": options.mode, "padding": options.padding, "align_corners": options.align_corners,
            "backend": options.backend}


def test_defaults_are_the_functions_defaults():
    options = SamplerOptions()
    assert (options.mode, options.padding, options.align_corners, options.backend) == ("bilinear", "zeros", False, "auto")


def test_choices_are_read_from_the_literals():
    assert MODES == typing.get_args(Mode) == ("bilinear", "nearest", "bicubic")
    assert PADDINGS == typing.get_args(Padding) == ("zeros", "border", "reflection")
    assert BACKEND_CHOICES == typing.get_args(Backend) == ("auto", *BACKENDS)
    assert BACKENDS == tuple(_KERNELS)  # one kernel per name a caller can give


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_sample_equals_the_functional_call(options):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 7, 8, generator=g)
    grid = torch.rand(2, 5, 6, 2, generator=g) * 2.4 - 1.2
    torch.testing.assert_close(options.sample(x, grid), stn.sample(x, grid, **_keywords(options)), rtol=0, atol=0)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.ThinPlateSpline(control=(3, 3))],
                         ids=lambda t: t.name)
def test_warp_equals_the_functional_call(options, transform):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 9, 10, generator=g)
    theta = (transform.identity(2) + 0.1 * torch.randn(2, transform.num_params, generator=g)).requires_grad_()
    out = options.warp(x, theta, transform, (6, 7))
    expected = stn.warp(x, theta, transform, (6, 7), **_keywords(options))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.square().sum(), theta)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), theta)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


def test_warp_keeps_the_input_size_and_takes_a_name():
    x = torch.rand(1, 2, 5, 6)
    out = SamplerOptions(align_corners=True).warp(x, stn.Affine().identity(1), "affine")
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("mode", "linear", ValueError),
        ("mode", 1, TypeError),
        ("padding", "constant", ValueError),
        ("padding", None, TypeError),
        ("align_corners", 1, TypeError),
        ("align_corners", "False", TypeError),
        ("backend", "cuda", ValueError),
        ("backend", 1, TypeError),  # (None is "auto", as in sample and warp)
    ],
)
def test_a_bad_value_raises_naming_the_option(field, value, error):
    with pytest.raises(error, match=f"^{field} must be"):
        SamplerOptions(**{field: value})


def test_frozen_hashable_picklable_deepcopyable():
    options = SamplerOptions(mode="nearest", padding="border", align_corners=True, backend="torch")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.mode = "bilinear"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(options)) == options
    assert copy.deepcopy(options) == options
    assert hash(options) == hash(SamplerOptions(mode="nearest", padding="border", align_corners=True, backend="torch"))
    assert dataclasses.replace(options, mode="bilinear").mode == "bilinear"
    with pytest.raises(ValueError, match="mode must be"):  # replace() validates the new value too
        dataclasses.replace(options, mode="cubic")  # type: ignore[arg-type]


def _count_checks(monkeypatch):
    """Record every option name validated and every θ checked while the test runs."""
    from torchstn.sampling import _sample

    seen: list[str] = []
    real_choice, real_params = _sample.check_choice, stn.Transform.check_params
    monkeypatch.setattr(_sample, "check_choice", lambda name, *a: seen.append(name) or real_choice(name, *a))
    monkeypatch.setattr(stn.Transform, "check_params",
                        lambda self, *a, **k: seen.append("params") or real_params(self, *a, **k))
    return seen


@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.ThinPlateSpline(control=(3, 3)),
                                       stn.Affine3D()], ids=lambda t: t.name)
@pytest.mark.parametrize("backend", ["auto", "fused", "torch"])
def test_warp_checks_params_and_each_option_once(transform, backend, monkeypatch):
    x = torch.rand(2, 3, *((4, 5, 6) if transform.ndim == 3 else (5, 6)))
    theta = transform.identity(2)
    options = SamplerOptions(backend=backend)
    grid = transform.grid(theta, x.shape[2:])
    seen = _count_checks(monkeypatch)
    # the fused kernel's common call checks θ's shape and dtype inline (warp's eager fast path), and
    # the compiled call the options too (each one's code looked up: an unknown one takes the general path)
    # (Affine3D's volumes too, once the 3-D kernel is built: a first volume's call builds it)
    if transform.ndim == 3:
        _fused3d.fused3d_available()
    served = _sample._compiled_warp(x, theta, transform, None, "bilinear", "zeros", False, backend) is not None
    planar = isinstance(transform, (stn.Affine, stn.Projective))
    assert served == (backend != "torch" and _fused.fast_call() is not None and (
        planar or (transform.ndim == 3 and _fused3d.fused3d_available())))
    fast = served or backend != "torch" and planar and _fused.fused_available()
    checked = [] if fast else ["params"]
    options_checked = [] if served else ["backend", "mode", "padding"]
    stn.warp(x, theta, transform, backend=backend)
    assert sorted(seen) == sorted([*options_checked, *checked])
    seen.clear()
    options.warp(x, theta, transform)  # validated when made: only θ is checked per call
    assert seen == checked
    seen.clear()
    options.sample(x, grid)
    assert seen == []
    # (the compiled call samples a grid of the fused kernels, checking the options inline)
    sampled_fast = _sample._compiled_sample(x, grid, "bilinear", "zeros", False, backend) is not None
    assert sampled_fast == (backend != "torch" and _fused.fast_call() is not None and (
        transform.ndim == 2 or _fused3d.fused3d_available()))
    seen.clear()
    stn.sample(x, grid, backend=backend)
    assert sorted(seen) == ([] if sampled_fast else ["backend", "mode", "padding"])


def test_warp_still_refuses_what_the_sampler_refused():
    with pytest.raises(ValueError, match=r"mode='bicubic' is 2-D only .* got a 5-D input"):
        SamplerOptions(mode="bicubic").warp(torch.rand(1, 1, 4, 4, 4), stn.Affine3D().identity(1), stn.Affine3D())
    with pytest.raises(ValueError, match=r"params must be on the device of x \(cpu\), got meta"):
        stn.warp(torch.rand(1, 1, 4, 4), stn.Affine().identity(1, device="meta"), "affine", backend="torch")
    with pytest.raises(ValueError, match="size must be positive"):
        SamplerOptions().warp(torch.rand(1, 1, 4, 4), stn.Affine().identity(1), "affine", (0, 4))
    with pytest.raises(ValueError, match=r"size must be 2 ints \(H, W\)"):
        stn.warp(torch.rand(1, 1, 4, 4), stn.Affine().identity(1), "affine", (4, 4, 4), backend="fused")
    with pytest.raises(ValueError, match=r"params for Affine must have shape \(B, 6\)"):
        SamplerOptions().warp(torch.rand(1, 1, 4, 4), torch.zeros(1, 4), "affine")
