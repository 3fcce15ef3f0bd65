"""The compiled call of the fused 2-D kernel (csrc/fast_call.cpp): the same bits as the ctypes
call it replaces, and the general path wherever it does not apply."""

import errno
import math
import warnings

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import torchstn as stn
from tests._helpers import random_grid, random_input, random_theta
from tests.sampling.conftest import skip_unless_built
from torchstn.sampling import SamplerOptions, _fused, _sample

pytestmark = pytest.mark.usefixtures("fused_kernel")


@pytest.fixture(autouse=True)
def compiled():
    """The compiled call's module; skip where it could not be built."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fast = _fused.fast_call()
    if fast is None:
        skip_unless_built("the fast call", _fused._fast_call_module.state.get("error"))
    return fast


@pytest.fixture
def without_fast_call(monkeypatch):
    """Run the body with the kernel called through ctypes, as before the compiled call."""

    def run(fn):
        with monkeypatch.context() as m:
            m.setitem(_fused._library.state, "fast", False)
            assert _fused.fast_call() is None
            return fn()

    return run


def _taken(x, params, transform, size=None, mode="bilinear", padding="zeros", align_corners=False, backend=None):
    return _sample._compiled_warp(x, params, transform, size, mode, padding, align_corners, backend) is not None


def _same(a: torch.Tensor, b: torch.Tensor, layout: bool = True) -> None:
    """Bit for bit, NaNs included, and (with ``layout``) laid out alike."""
    assert a.dtype == b.dtype and a.shape == b.shape and (not layout or a.stride() == b.stride())
    assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) and torch.equal(a.isnan(), b.isnan())


def _cases(dtype):
    affine, projective = stn.Affine(), stn.Projective()
    theta = random_theta(affine, 3, dtype, scale=0.3, seed=4)
    h = random_theta(projective, 3, dtype, scale=0.2, seed=5)
    return {
        "affine": (theta, affine),
        "rows": (theta.view(3, 2, 3), affine),
        "rows-view": (torch.cat([theta, theta], 1)[:, ::2], affine),  # non-contiguous parameters
        "projective": (h, projective),
        "projective-eps": (h, stn.Projective(eps=0.5)),
        "projective-name": (h, "proj"),
        "affine-name": (theta, "affine"),
        "nan": (torch.where(torch.arange(6) == 2, float("nan"), theta), affine),
        # (their rows made by the compiled call: fast_call.cpp's family_rows)
        "translation": (theta[:, [2, 5]].contiguous(), stn.Translation()),
        "attention": (theta[:, [0, 2, 5]].contiguous(), stn.Attention()),
        "similarity": (torch.stack([theta[:, 0], 3 * theta[:, 1], theta[:, 2], theta[:, 5]], 1), stn.Similarity()),
        "similarity-name": (torch.stack([theta[:, 0], theta[:, 1], theta[:, 2], theta[:, 5]], 1), "similarity"),
        "similarity-nan": (torch.where(torch.arange(4) == 1, float("nan"), theta[:, :4]), stn.Similarity()),
    }


def _inputs(dtype):
    x = random_input((3, 3, 9, 11), dtype)
    return {
        "nchw": x,
        "channels-last": x.contiguous(memory_format=torch.channels_last),
        "one-channel": x[:, :1].contiguous(),
        "view": x.transpose(2, 3),
        "inf-pixel": x.index_put((torch.tensor([0]), torch.tensor([0]), torch.tensor([4]), torch.tensor([5])),
                                 torch.tensor(float("inf"), dtype=dtype)),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["affine", "rows", "rows-view", "projective", "projective-eps", "projective-name",
                                  "affine-name", "nan", "translation", "attention", "similarity", "similarity-name",
                                  "similarity-nan"])
@pytest.mark.parametrize("layout", ["nchw", "channels-last", "one-channel", "view", "inf-pixel"])
def test_the_compiled_call_gives_the_ctypes_calls_bits(dtype, case, layout, without_fast_call):
    params, transform = _cases(dtype)[case]
    x = _inputs(dtype)[layout]
    for size, mode, padding, align_corners in [(None, "bilinear", "zeros", False), ((5, 7), "nearest", "border", True),
                                               ((12, 4), "bilinear", "reflection", True)]:
        assert _taken(x, params, transform, size, mode, padding, align_corners)
        out = stn.warp(x, params, transform, size, mode, padding, align_corners)
        _same(out, without_fast_call(lambda: stn.warp(x, params, transform, size, mode, padding, align_corners)))
    _same(SamplerOptions(padding="border").warp(x, params, transform),  # a module's call: checked options
          without_fast_call(lambda: stn.warp(x, params, transform, padding="border")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_operators_cpu_implementation_gives_the_ctypes_calls_bits(dtype, without_fast_call):
    x = _inputs(dtype)["channels-last"]
    locs = {"affine": random_theta(stn.Affine(), 3, dtype, scale=0.3).view(3, 2, 3),
            "projective": stn.Projective().matrix(random_theta(stn.Projective(), 3, dtype, scale=0.2)),
            "grid": random_grid((3, 6, 5, 2), dtype, spread=1.2)}
    for location, loc in locs.items():
        size = [6, 5]
        for op in (torch.ops.torchstn.warp2d, _fused._warp2d_cpu):
            out = op(x, loc, location, size, "bilinear", "zeros", False, 1e-6)
            _same(out, without_fast_call(lambda: op(x, loc, location, size, "bilinear", "zeros", False, 1e-6)))


def test_a_gradient_to_record_takes_the_compiled_calls_autograd_node_for_the_affine_families():
    x, theta = torch.rand(2, 1, 8, 8), stn.Affine().identity(2).requires_grad_()
    assert _taken(x, theta, stn.Affine())
    out = stn.warp(x, theta, stn.Affine())
    assert out.grad_fn.name() == "torchstn::Warp2dBackward"
    for family in (stn.Translation(), stn.Attention(), stn.Similarity()):  # (their rows made inside the node)
        params = family.identity(2).requires_grad_()
        assert _taken(x, params, family)
        out = stn.warp(x, params, family)
        assert out.grad_fn.name() == "torchstn::Warp2dBackward"
        assert out.grad_fn.next_functions[1][0].variable is params  # one node, from the output to the parameters
    h = stn.Projective().identity(2).requires_grad_()  # (its matrix is made in Python, differentiably)
    assert not _taken(x, h, stn.Projective())
    with torch.no_grad():
        assert _taken(x, theta, stn.Affine())
    with torch.inference_mode():
        assert _taken(x, theta, stn.Affine())
        assert stn.warp(x, theta, stn.Affine()).is_inference()


def _gradients(fn, inputs, grad_out, create_graph=False):
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad_out, create_graph=create_graph))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["affine", "rows", "rows-view", "projective", "nan", "grid", "translation",
                                  "attention", "similarity", "similarity-nan"])
@pytest.mark.parametrize("layout", ["nchw", "channels-last", "view", "inf-pixel"])
def test_the_recorded_call_gives_the_python_formulas_bits(dtype, case, layout, without_fast_call):
    """The C++ autograd node (fast_warp, fast_sample and the operator's eager call) against
    the Python autograd.Function it replaces: output and both gradients bit for bit, for a
    dense, a channels_last and an expanded output gradient."""
    x = _inputs(dtype)[layout].requires_grad_()
    if case == "grid":
        params = random_grid((3, 5, 7, 2), dtype, spread=1.2).requires_grad_()

        def fn(x_, p_):
            return stn.sample(x_, p_, padding="border")
    else:
        params, transform = _cases(dtype)[case]
        params = params.detach().requires_grad_() if params.is_leaf else params.detach().clone().requires_grad_()

        def fn(x_, p_):
            return stn.warp(x_, p_, transform, (5, 7))
    dense = torch.randn(3, 3, 5, 7, dtype=dtype)
    for grad_out in (dense, dense.contiguous(memory_format=torch.channels_last), torch.ones((), dtype=dtype).expand(
            3, 3, 5, 7)):
        found = _gradients(fn, (x, params), grad_out)
        expected = without_fast_call(lambda: _gradients(fn, (x, params), grad_out))
        for i, (a, b) in enumerate(zip(found, expected)):
            # (the families' parameter gradient: contiguous, where autograd's through their rows'
            # operations is a strided view of the rows' gradient)
            _same(a, b, layout=i < 2 or case not in ("translation", "attention", "similarity", "similarity-nan"))


def test_the_autograd_node_hands_create_graph_and_batched_gradients_to_the_differentiable_expression():
    x = random_input((2, 2, 6, 5), torch.float64).requires_grad_()
    theta = random_theta(stn.Affine(), 2, torch.float64, scale=0.3).requires_grad_()
    grid = random_grid((2, 4, 3, 2), torch.float64, spread=1.2).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: stn.warp(a, b, "affine", (4, 3)), (x, theta))
    for family, params in (("translation", theta[:, [2, 5]]), ("attention", theta[:, [0, 2, 5]]),
                           ("similarity", theta[:, [0, 1, 2, 5]])):  # (rows made in the node)
        assert torch.autograd.gradgradcheck(lambda a, b, f=family: stn.warp(a, b, f, (4, 3)), (x, params.detach().requires_grad_()))
    assert torch.autograd.gradgradcheck(lambda a, b: stn.sample(a, b), (x, grid))
    assert torch.autograd.gradcheck(lambda a, b: stn.warp(a, b, "affine", (4, 3)), (x, theta), check_batched_grad=True)
    # a gradient penalty: the gradient's graph reaches θ
    out = stn.warp(x, theta, "affine")
    (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (penalty,) = torch.autograd.grad(gx.square().sum(), theta)
    out = stn.warp(x, theta, "affine", backend="torch")
    (gx_ref,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (expected,) = torch.autograd.grad(gx_ref.square().sum(), theta)
    torch.testing.assert_close(penalty, expected)


def test_the_autograd_node_saves_inference_tensors_as_copies():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    with torch.inference_mode():
        theta = stn.Affine().identity(2) + 0.1
    out = stn.warp(x, theta, "affine")
    assert out.grad_fn.name() == "torchstn::Warp2dBackward"
    out.sum().backward()
    expected = torch.autograd.grad(stn.warp(x, theta.clone(), "affine", backend="torch").sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)


class _Subclass(torch.Tensor):
    pass


class _AffineVariant(stn.Affine):  # a subclass may change the map: never the compiled call
    pass


def test_what_the_compiled_call_leaves_to_the_general_path(without_fast_call):
    """Each declined call: None from the compiled call, and warp's answer (or error) is the general path's."""
    x, theta, affine = torch.rand(2, 3, 8, 8), stn.Affine().identity(2), stn.Affine()
    declined = {
        "torch backend": (x, theta, affine, None, "bilinear", "zeros", False, "torch"),
        "a name it does not know": (x, theta, "affine2", None, "bilinear", "zeros", False, None),
        "another family": (x, stn.ThinPlateSpline((3, 3)).identity(2), stn.ThinPlateSpline((3, 3)), None, "bilinear",
                           "zeros", False, None),
        "similarity's rows as matrix": (x, stn.Similarity().matrix(stn.Similarity().identity(2))[:, :2],
                                        stn.Similarity(), None, "bilinear", "zeros", False, None),
        "translation of three parameters": (x, torch.zeros(2, 3), stn.Translation(), None, "bilinear", "zeros", False,
                                            None),
        "a subclass of the family": (x, theta, _AffineVariant(), None, "bilinear", "zeros", False, None),
        "bicubic": (x, theta, affine, None, "bicubic", "zeros", False, None),
        "unknown mode": (x, theta, affine, None, "cubic", "zeros", False, None),
        "unhashable padding": (x, theta, affine, None, "bilinear", ["zeros"], False, None),
        "size a list": (x, theta, affine, [4, 4], "bilinear", "zeros", False, None),
        "size of numpy ints": (x, theta, affine, (np.int64(4), np.int64(4)), "bilinear", "zeros", False, None),
        "size of bools": (x, theta, affine, (True, True), "bilinear", "zeros", False, None),
        "size 0": (x, theta, affine, (0, 4), "bilinear", "zeros", False, None),
        "size of three": (x, theta, affine, (4, 4, 4), "bilinear", "zeros", False, None),
        "float64 params, float32 x": (x, theta.double(), affine, None, "bilinear", "zeros", False, None),
        "half x": (x.half(), theta.half(), affine, None, "bilinear", "zeros", False, None),
        "wrong params shape": (x, theta[:, :5], affine, None, "bilinear", "zeros", False, None),
        "batch mismatch": (x, theta[:1], affine, None, "bilinear", "zeros", False, None),
        "empty batch": (x[:0], theta[:0], affine, None, "bilinear", "zeros", False, None),
        "empty image": (x[:, :, :0], theta, affine, (4, 4), "bilinear", "zeros", False, None),
        "a homography as matrix": (x, stn.Projective().matrix(stn.Projective().identity(2)), stn.Projective(), None,
                                   "bilinear", "zeros", False, None),
        "a volume": (torch.rand(2, 1, 4, 4, 4), theta, affine, None, "bilinear", "zeros", False, None),
        "a subclass tensor": (x.as_subclass(_Subclass), theta, affine, None, "bilinear", "zeros", False, None),
        "meta params": (x, theta.to("meta"), affine, None, "bilinear", "zeros", False, None),
        "meta x": (x.to("meta"), theta.to("meta"), affine, None, "bilinear", "zeros", False, None),
    }
    for name, args in declined.items():
        assert _sample._compiled_warp(*args) is None, name
        x_, params, transform, size, mode, padding, align_corners, backend = args
        _answers_alike(lambda: stn.warp(x_, params, transform, size, mode, padding, align_corners, backend=backend),
                       without_fast_call, name)


def _answers_alike(call, without_fast_call, name: str) -> None:
    """``call()`` gives what it gives without the compiled call: the same bits (the same shape on
    the meta device), or an error of the same type."""
    try:
        expected = without_fast_call(call)
    except Exception as error:  # noqa: BLE001 - the same error, whatever it is
        with pytest.raises(type(error), match=None):
            call()
        return
    if expected.is_meta:  # (no values to compare)
        assert call().shape == expected.shape, name
    else:
        _same(call(), expected)


def test_state_that_records_or_transforms_calls_takes_the_general_path():
    x, theta, affine = torch.rand(2, 3, 8, 8), stn.Affine().identity(2), stn.Affine()
    seen = []

    class Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    class Dispatches(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    for mode in (Functions(), Dispatches()):
        seen.clear()
        with mode:
            assert not _taken(x, theta, affine)
            stn.warp(x, theta, affine)
        assert seen  # the mode saw the call's operations
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _taken(x, theta, affine)
    with torch.autograd.forward_ad.dual_level():
        assert not _taken(x, theta, affine)
    assert torch.func.vmap(lambda t: torch.tensor(float(_taken(x, theta, affine))))(theta).sum() == 0
    traced = torch.jit.trace(lambda x, t: stn.warp(x, t, affine), (x, theta))
    other = stn.Affine().identity(2) + 0.1
    torch.testing.assert_close(traced(x, other), stn.warp(x, other, affine))  # the trace recorded the warp
    compiled = torch.compile(lambda x, t: stn.warp(x, t, affine), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, other), stn.warp(x, other, affine))


def test_a_failed_fast_call_build_warns_once_and_calls_through_ctypes(monkeypatch, without_fast_call):
    def broken():
        raise RuntimeError("Python.h: No such file or directory")

    lazy = _fused.LazyKernel(broken, "the fused sampler's fast call", "the kernel is called through ctypes")
    monkeypatch.setattr(_fused, "_fast_call_module", lazy)
    monkeypatch.delitem(_fused._library.state, "fast")
    x, theta = torch.rand(2, 3, 8, 8), stn.Affine().identity(2) + 0.1
    with pytest.warns(RuntimeWarning, match="fast call could not be built.*Python.h"):
        out = stn.warp(x, theta, stn.Affine())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        _same(stn.warp(x, theta, stn.Affine()), out)
    assert _fused.fast_call() is None
    monkeypatch.undo()
    _same(out, stn.warp(x, theta, stn.Affine()))


@pytest.mark.parametrize("error", [OSError(errno.EROFS, "Read-only file system"), PermissionError(13, "Denied"),
                                   OSError(errno.ENOSPC, "No space left on device")], ids=str)
def test_a_build_whose_cache_cannot_be_written_names_the_cache_not_the_compiler(error):
    """A read-only file system (a plain OSError, no subclass of its own) was blamed on the
    compiler, as every error that was not PermissionError or NotADirectoryError."""
    def build(raised: Exception):
        def broken():
            raise raised
        return broken

    with pytest.warns(RuntimeWarning, match="could not be built.*It needs a cache directory it can write") as seen:
        assert _fused.LazyKernel(build(error), "the fused sampler", "grid_sample")() is None
    assert "compiler" not in str(seen[0].message)
    with pytest.warns(RuntimeWarning, match="It needs a C.. compiler"):  # (what a failed compilation says)
        _fused.LazyKernel(build(RuntimeError("g++: not found")), "the fused sampler", "grid_sample")()


def test_other_python_threads_run_during_a_large_compiled_call():
    """The kernel runs without the GIL from 16,384 output values on (as through ctypes, and as
    torch's operators): a thread that counts while another warps is never stopped for the
    warp's duration."""
    import threading
    import time

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (the kernel on one core, this thread's loop on the other)
    try:
        x, theta = torch.rand(16, 3, 768, 768), stn.Affine().identity(16) + 0.05  # (about 0.1 s)
        assert _taken(x, theta, stn.Affine())
        start = time.perf_counter()
        stn.warp(x, theta, stn.Affine())
        duration = time.perf_counter() - start
        done, gaps = threading.Event(), []

        def warp():
            stn.warp(x, theta, stn.Affine())
            done.set()

        worker = threading.Thread(target=warp)
        last = time.perf_counter()
        worker.start()
        while not done.is_set():
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        worker.join()
    finally:
        torch.set_num_threads(threads)
    assert max(gaps) < 0.5 * duration, (max(gaps), duration)


def test_a_call_it_cannot_serve_does_not_build_it(monkeypatch):
    """Before the compiled call is first loaded, a call on another device or dtype (a GPU user's
    first warp) neither builds it nor the kernel."""
    def build():
        raise AssertionError("built for a call it cannot serve")

    monkeypatch.setattr(_fused, "_fast_call_module", _fused.LazyKernel(build, "the fast call", "-"))
    monkeypatch.delitem(_fused._library.state, "fast")
    theta = stn.Affine().identity(2)
    for x in (torch.rand(2, 1, 8, 8, device="meta"), torch.rand(2, 1, 8, 8).half()):
        assert not _taken(x, theta.to(x.device, x.dtype), stn.Affine())
    x = torch.rand(2, 1, 8, 8)
    tps = stn.ThinPlateSpline()
    assert not _taken(x, theta, stn.Affine(), backend="torch")
    assert not _taken(x, tps.identity(2), tps)
    assert not _taken(torch.rand(2, 1, 4, 4, 4).half(), stn.Affine3D().identity(2).half(), stn.Affine3D())
    assert not _sampled(torch.rand(2, 1, 4, 4, 4), random_grid((2, 3, 3, 3, 3), torch.float32), backend="torch")
    grid = random_grid((2, 3, 4, 2), torch.float32)
    assert not _sampled(x, grid, "bicubic", backend="torch")
    assert not _sampled(x, grid, "cubic")
    assert not _sampled(x, grid, backend="torch")
    assert not _sampled(x, grid, ["bilinear"])
    assert not _sampled(x.half(), grid.half(), backend="fused")
    assert "fast" not in _fused._library.state


def test_a_default_device_keeps_the_compiled_call():
    """``with torch.device(...)`` is a torch function mode that records nothing (the eager
    paths take it as eager): the compiled call serves calls under it."""
    x, theta = torch.rand(2, 3, 8, 8), stn.Affine().identity(2)
    with torch.device("cpu"):
        assert _taken(x, theta, stn.Affine())


def test_it_refuses_a_kernel_of_another_abi(compiled):
    with pytest.raises(RuntimeError, match="kernel ABI"):
        compiled.set_kernels(0, 0, 0, 0, _fused._ABI + 1)


def test_a_name_is_looked_up_once_and_then_served(monkeypatch):
    """The compiled call reads a transform's name in _fused._NAMED; a name it has not met is
    made there by _fused._named (get_transform's, so in any case and any alias), once."""
    made = []
    monkeypatch.setattr(_fused, "get_transform", lambda name: made.append(name) or stn.transforms.get_transform(name))
    saved = dict(_fused._NAMED)
    _fused._NAMED.clear()
    try:
        x, theta = torch.rand(2, 1, 8, 8), stn.Affine().identity(2) + 0.1
        expected = stn.warp(x, theta, stn.Affine())
        for name in ("AFF", "AFF", "aff"):
            assert _taken(x, theta, name)
            _same(stn.warp(x, theta, name), expected)
        assert made == ["AFF", "aff"] and isinstance(_fused._NAMED["AFF"], stn.Affine)
        assert not _taken(x, theta, "no-such-transform")
    finally:
        _fused._NAMED.clear()
        _fused._NAMED.update(saved)


# ---------------------------------------------------------------------------------------------
# sample: the compiled call of a given grid (fast_sample)


def _sampled(x, grid, mode="bilinear", padding="zeros", align_corners=False, backend=None):
    return _sample._compiled_sample(x, grid, mode, padding, align_corners, backend) is not None


def _grids(dtype):
    grid = random_grid((3, 6, 5, 2), dtype, spread=1.3, seed=2)
    return {
        "grid": grid,
        "view": random_grid((3, 5, 6, 2), dtype, seed=3).transpose(1, 2),  # non-contiguous
        "nan": grid.index_put((torch.tensor([1]), torch.tensor([2]), torch.tensor([3]), torch.tensor([0])),
                              torch.tensor(float("nan"), dtype=dtype)),
        "inf": grid.index_put((torch.tensor([0]), torch.tensor([4]), torch.tensor([1]), torch.tensor([1])),
                              torch.tensor(float("-inf"), dtype=dtype)),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["grid", "view", "nan", "inf"])
@pytest.mark.parametrize("layout", ["nchw", "channels-last", "one-channel", "view", "inf-pixel"])
def test_the_compiled_sample_gives_the_python_paths_bits(dtype, case, layout, without_fast_call):
    x, grid = _inputs(dtype)[layout], _grids(dtype)[case]
    for mode, padding, align_corners, backend in [("bilinear", "zeros", False, None), ("bilinear", "border", True, "auto"),
                                                  ("nearest", "reflection", False, "fused"),
                                                  ("bilinear", "reflection", True, "fused")]:
        assert _sampled(x, grid, mode, padding, align_corners, backend)
        out = stn.sample(x, grid, mode, padding, align_corners, backend=backend)
        _same(out, without_fast_call(lambda: stn.sample(x, grid, mode, padding, align_corners, backend="fused")))
        if case == "grid" and layout != "inf-pixel":  # the independent reference
            expected = torch.nn.functional.grid_sample(x, grid, mode, padding, align_corners)
            torch.testing.assert_close(out, expected, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
    grid = _grids(dtype)[case]
    _same(SamplerOptions(padding="border").sample(x, grid),  # a module's call: checked options
          without_fast_call(lambda: stn.sample(x, grid, padding="border", backend="fused")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_sample_of_a_signal_gives_the_python_paths_bits(dtype, without_fast_call):
    """A signal (B, C, L) and its grid (B, Lo, 1): the compiled call lifts them to an image of
    height 1 and its grid (y = 0 * x) as the Python path does, so the same bits and gradients,
    NaN and inf points and a non-contiguous signal included; and F.grid_sample's values."""
    x = random_input((3, 2, 11), dtype, seed=5)
    grid = random_grid((3, 7, 1), dtype, spread=1.3, seed=6)
    grid[1, 2, 0], grid[2, 4, 0] = float("nan"), float("inf")
    for signal in (x, random_input((3, 11, 2), dtype, seed=7).transpose(1, 2)):
        cases = [("bilinear", "zeros", False, None), ("nearest", "border", True, None),
                 ("bilinear", "reflection", True, "fused")]
        for mode, padding, align_corners, backend in cases:
            assert _sampled(signal, grid, mode, padding, align_corners, backend)
            xs, gs = signal.clone().requires_grad_(), grid.clone().requires_grad_()
            out = stn.sample(xs, gs, mode, padding, align_corners, backend=backend)
            expected = without_fast_call(lambda: stn.sample(xs, gs, mode, padding, align_corners, backend="fused"))
            _same(out, expected)
            g = torch.rand_like(out)
            for a, b in zip(torch.autograd.grad(out, (xs, gs), g), torch.autograd.grad(expected, (xs, gs), g)):
                _same(a, b)
            finite = grid.isfinite().all(-1, keepdim=True).expand_as(grid)
            reference = torch.nn.functional.grid_sample(signal[:, :, None], torch.where(finite, grid, 0).mul(
                torch.tensor([1.0, 0.0], dtype=dtype)).unsqueeze(1), mode, padding, align_corners)[:, :, 0]
            ok = finite[:, None, :, 0].expand_as(out)
            torch.testing.assert_close(out.detach()[ok], reference[ok])
            assert out.detach()[~ok].isnan().all()


def _with_nan(grid: torch.Tensor) -> torch.Tensor:
    return grid.index_put((torch.tensor([1]), torch.tensor([2]), torch.tensor([3]), torch.tensor([0])),
                          torch.tensor(float("nan"), dtype=grid.dtype))


def test_what_the_compiled_sample_leaves_to_the_python_path(without_fast_call):
    """Each declined call: None from the compiled call, and sample's answer (or error) is the Python path's."""
    x, grid = torch.rand(2, 3, 8, 8), random_grid((2, 4, 5, 2), torch.float32)
    declined = {
        "torch backend": (x, grid, "bilinear", "zeros", False, "torch"),
        "reference backend": (x, grid, "bilinear", "zeros", False, "reference"),
        "bicubic, a NaN point, border padding (the careful path)": (x, _with_nan(grid), "bicubic", "border", False,
                                                                      None),
        "bicubic, a NaN point, its gradient recorded": (x, _with_nan(grid).requires_grad_(), "bicubic", "zeros", False,
                                                        "fused"),
        "auto nearest on many points, a NaN point": (x, _with_nan(random_grid((2, 100, 100, 2), torch.float32)),
                                                     "nearest", "zeros", False, None),
        "bicubic, a point past 1.8e19": (x, grid * 1e20, "bicubic", "reflection", False, None),
        "unknown mode": (x, grid, "cubic", "zeros", False, None),
        "unknown padding": (x, grid, "bilinear", "wrap", False, None),
        "unhashable padding": (x, grid, "bilinear", ["zeros"], False, None),
        "unknown backend": (x, grid, "bilinear", "zeros", False, "fast"),
        "float64 grid, float32 x": (x, grid.double(), "bilinear", "zeros", False, None),
        "half": (x.half(), grid.half(), "bilinear", "zeros", False, "fused"),
        "a 3-D grid's points": (x, random_grid((2, 4, 5, 3), torch.float32), "bilinear", "zeros", False, None),
        "a 5-D grid": (x, random_grid((2, 1, 4, 5, 2), torch.float32), "bilinear", "zeros", False, None),
        "batch mismatch": (x, grid[:1], "bilinear", "zeros", False, None),
        "empty batch": (x[:0], grid[:0], "bilinear", "zeros", False, None),
        "empty grid": (x, grid[:, :0], "bilinear", "zeros", False, None),
        "empty image": (x[:, :, :0], grid, "bilinear", "zeros", False, None),
        "a signal with an image's grid": (torch.rand(2, 3, 8), random_grid((2, 5, 4, 2), torch.float32), "bilinear",
                                          "zeros", False, None),
        "a signal's grid of another dtype": (torch.rand(2, 3, 8), random_grid((2, 5, 1), torch.float64), "bilinear",
                                             "zeros", False, None),
        "a volume's grid of 2-D points": (torch.rand(2, 1, 4, 4, 4), random_grid((2, 3, 3, 3, 2), torch.float32),
                                          "bilinear", "zeros", False, None),
        "a volume in float16": (torch.rand(2, 1, 4, 4, 4).half(), random_grid((2, 3, 3, 3, 3), torch.float16),
                                "bilinear", "fused", False, None),
        "an empty volume": (torch.rand(2, 1, 0, 4, 4), random_grid((2, 3, 3, 3, 3), torch.float32), "bilinear",
                            "zeros", False, None),
        "a volume's empty grid": (torch.rand(2, 1, 4, 4, 4), random_grid((2, 0, 3, 3, 3), torch.float32), "bilinear",
                                  "zeros", False, None),
        "a volume, bicubic": (torch.rand(2, 1, 4, 4, 4), random_grid((2, 3, 3, 3, 3), torch.float32), "bicubic",
                              "zeros", False, None),
        "a subclass tensor": (x, grid.as_subclass(_Subclass), "bilinear", "zeros", False, None),
        "a list grid": (x, grid.tolist(), "bilinear", "zeros", False, None),
        "meta": (x.to("meta"), grid.to("meta"), "bilinear", "zeros", False, None),
    }
    for name, args in declined.items():
        assert _sample._compiled_sample(*args) is None, name
        x_, grid_, mode, padding, align_corners, backend = args
        _answers_alike(lambda: stn.sample(x_, grid_, mode, padding, align_corners, backend=backend),
                       without_fast_call, name)


def test_a_backend_that_only_compares_equal_to_one_is_the_python_paths_to_refuse():
    from unittest import mock

    x, grid, theta = torch.rand(2, 1, 8, 8), random_grid((2, 4, 5, 2), torch.float32), stn.Affine().identity(2)
    for backend in (mock.ANY, np.array("fused"), np.array(["fused", "auto"])):
        assert _sample._compiled_sample(x, grid, "bilinear", "zeros", False, backend) is None
        assert _sample._compiled_warp(x, theta, "affine", None, "bilinear", "zeros", False, backend) is None
        with pytest.raises(TypeError, match="backend must be"):
            stn.sample(x, grid, backend=backend)
        with pytest.raises(TypeError, match="backend must be"):
            stn.warp(x, theta, "affine", backend=backend)


def test_a_grid_with_a_gradient_to_record_takes_the_autograd_node():
    x, grid = torch.rand(2, 1, 8, 8), random_grid((2, 4, 4, 2), torch.float32).requires_grad_()
    assert _sampled(x, grid, backend="fused")
    assert stn.sample(x, grid, backend="fused").grad_fn.name() == "torchstn::Warp2dBackward"
    with torch.inference_mode():
        assert _sampled(x, grid)
        assert stn.sample(x, grid).is_inference()


def test_state_that_records_or_transforms_samples_takes_the_python_path():
    x, grid = torch.rand(2, 3, 8, 8), random_grid((2, 4, 5, 2), torch.float32)
    seen = []

    class Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Functions():
        assert not _sampled(x, grid)
        stn.sample(x, grid)
    assert seen
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _sampled(x, grid)
    with torch.autograd.forward_ad.dual_level():
        assert not _sampled(x, grid)
    assert torch.func.vmap(lambda g: torch.tensor(float(_sampled(x, grid))))(grid).sum() == 0
    other = random_grid((2, 4, 5, 2), torch.float32, seed=9)
    compiled = torch.compile(lambda x, g: stn.sample(x, g), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, other), stn.sample(x, other))


def test_the_compiled_call_is_published_only_once_set_up(monkeypatch):
    """fast_call published the compiled call in the kernel's state before giving it the
    kernels, so another thread's warp in between used it half set up ("torchstn fast_call:
    the kernel is not set"). It is published once its Python side and kernels are set."""
    seen = []

    class Module:
        def set_python(self, *args):
            seen.append(("python", _fused._library.state.get("fast")))

        def set_backward_fallback(self, *args):
            seen.append(("fallback", _fused._library.state.get("fast")))

        def set_kernels(self, *args):
            seen.append(("kernels", _fused._library.state.get("fast")))

    module = Module()
    monkeypatch.setitem(_fused._library.state, "fast", None)
    monkeypatch.setattr(_fused, "_fast_call_module", lambda: module)
    monkeypatch.setattr(_fused, "FAST_CALL_LOADED", [lambda fast: seen.append(("3-D kernel", _fused._library.state
                                                                                 .get("fast")))])
    assert _fused.fast_call() is module
    # nothing published while set up
    assert seen == [("python", None), ("fallback", None), ("kernels", None), ("3-D kernel", None)]
    assert _fused._library.state["fast"] is module


def test_the_switch_of_the_compiled_call_reads_the_usual_words(monkeypatch):
    """Only TORCHSTN_FAST_CALL=0 turned it off: "off", "false" and "no" were silently ignored."""
    import warnings

    from torchstn.sampling._fused import _fast_call_wanted

    for value, wanted in (("0", False), ("off", False), (" False ", False), ("no", False), ("1", True), ("on", True),
                          ("", True)):
        monkeypatch.setenv("TORCHSTN_FAST_CALL", value)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _fast_call_wanted() is wanted, value
    monkeypatch.setenv("TORCHSTN_FAST_CALL", "garbage")
    with pytest.warns(RuntimeWarning, match="TORCHSTN_FAST_CALL='garbage' is neither"):
        assert _fast_call_wanted()


def _other_strides(t: torch.Tensor) -> torch.Tensor:
    """The same values with the last two dimensions' memory transposed."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("unpack", [_other_strides, lambda t: torch._neg_view(-t)], ids=["strides", "neg-bit"])
@pytest.mark.parametrize("case", ["affine", "grid"])
def test_the_autograd_node_reads_what_a_saved_tensor_hook_hands_back(case, unpack):
    """A saved-tensor hook may return the same values with other strides or a negative bit: the
    node's first version read the saved θ and grid as it had saved them (gradients 24-79 off)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    if case == "grid":
        loc = (torch.rand(2, 5, 6, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
        run = lambda backend: stn.sample(x, loc, backend=backend)  # noqa: E731
    else:
        loc = random_theta(stn.Affine(), 2, torch.float64, scale=0.3).requires_grad_()
        run = lambda backend: stn.warp(x, loc, "affine", (5, 6), backend=backend)  # noqa: E731
    grads = {}
    for backend in (None, "torch"):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):
            out = run(backend)
        grads[backend] = torch.autograd.grad(out, (x, loc), torch.linspace(-1, 1, out.numel()).double().view_as(out))
    assert run(None).grad_fn.name() == "torchstn::Warp2dBackward"
    for a, b in zip(grads[None], grads["torch"]):
        torch.testing.assert_close(a, b)


def test_the_autograd_node_keeps_a_negative_views_graph_under_create_graph():
    """x = z.conj().imag carries a negative bit; resolved inside the node's forward, its saved copy
    was cut from z's graph, and a penalty's second-order term through x was lost (7637 against
    11431 on every other path)."""
    torch.manual_seed(0)
    z = torch.randn(2, 3, 7, 9, dtype=torch.complex128, requires_grad=True)
    theta = random_theta(stn.Affine(), 2, torch.float64, scale=0.3).requires_grad_()
    penalties = {}
    for backend in (None, "torch"):
        x = z.conj().imag
        out = stn.warp(x, theta, "affine", backend=backend)
        (gt,) = torch.autograd.grad(out.square().sum(), theta, create_graph=True)
        (penalties[backend],) = torch.autograd.grad(gt.square().sum(), z)
    torch.testing.assert_close(penalties[None], penalties["torch"])


@pytest.mark.parametrize("transform", [stn.Affine(), stn.Affine3D()], ids=lambda t: t.name)
def test_an_efficient_zero_output_gradient_gives_zero_gradients(transform):
    """torch._efficientzerotensor has no memory: the 2-D node raised "data is not allocated" and
    the 3-D operator's kernel crashed the process; F.grid_sample gives zeros."""
    shape = (2, 1, 8, 8) if transform.ndim == 2 else (2, 1, 6, 6, 6)
    x, theta = torch.rand(shape, requires_grad=True), transform.identity(2).requires_grad_()
    out = stn.warp(x, theta, transform)
    for grad in torch.autograd.grad(out, (x, theta), torch._efficientzerotensor(out.shape, dtype=out.dtype)):
        assert torch.equal(grad, torch.zeros_like(grad))


# ---------------------------------------------------------------------------------------------
# sample of a volume: the compiled call of the 3-D kernel (fast_sample, torchstn::Warp3dBackward)


def _volumes(dtype):
    x = random_input((2, 3, 5, 6, 7), dtype)
    return {
        "contiguous": x,
        "view": x.transpose(2, 4),  # non-contiguous: the kernel reads a contiguous copy
        "one-channel": x[:, 1:2],
        "inf-voxel": x.index_put((torch.tensor([1]), torch.tensor([0]), torch.tensor([2]), torch.tensor([3]),
                                  torch.tensor([1])), torch.tensor(float("inf"), dtype=dtype)),
    }


def _volume_grids(dtype):
    grid = random_grid((2, 4, 3, 5, 3), dtype, spread=1.3, seed=2)
    return {
        "grid": grid,
        "view": random_grid((2, 5, 3, 4, 3), dtype, seed=3).transpose(1, 3),
        "nan": grid.index_put((torch.tensor([1]), torch.tensor([2]), torch.tensor([1]), torch.tensor([3]),
                               torch.tensor([2])), torch.tensor(float("nan"), dtype=dtype)),
        "inf": grid.index_put((torch.tensor([0]), torch.tensor([3]), torch.tensor([0]), torch.tensor([1]),
                               torch.tensor([0])), torch.tensor(float("-inf"), dtype=dtype)),
    }


@pytest.fixture
def volume_call(fused3d_kernel, compiled):
    """The compiled call with the 3-D kernel, handed to it again here: the kernel hands itself to
    the compiled call loaded when it is built, and a test of this module that built it while
    without_fast_call had switched the call off kept it from the call."""
    from torchstn.sampling import _fused3d

    _fused3d._hand_to_fast_call(compiled)


@pytest.mark.usefixtures("volume_call")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["grid", "view", "nan", "inf"])
@pytest.mark.parametrize("layout", ["contiguous", "view", "one-channel", "inf-voxel"])
def test_the_compiled_sample_of_a_volume_gives_the_python_paths_bits(dtype, case, layout, without_fast_call):
    """Values and both gradients, bit for bit, as the 3-D operator's Python path (ctypes and its
    autograd formula) gives them, non-finite points and voxels included; and F.grid_sample's values."""
    x, grid = _volumes(dtype)[layout], _volume_grids(dtype)[case]
    options = [("bilinear", "zeros", False, None), ("bilinear", "border", True, "auto"),
               ("nearest", "reflection", False, "fused"), ("nearest", "zeros", True, None)]
    for mode, padding, align_corners, backend in options:
        assert _sampled(x, grid, mode, padding, align_corners, backend)
        xs, gs = x.clone().requires_grad_(), grid.clone().requires_grad_()
        out = stn.sample(xs, gs, mode, padding, align_corners, backend=backend)
        assert out.grad_fn.name() == "torchstn::Warp3dBackward"
        expected = without_fast_call(lambda: stn.sample(xs, gs, mode, padding, align_corners, backend="fused"))
        _same(out, expected)
        g = random_input(out.shape, dtype, seed=8)
        for a, b in zip(torch.autograd.grad(out, (xs, gs), g), torch.autograd.grad(expected, (xs, gs), g)):
            _same(a, b)
        with torch.no_grad():
            _same(stn.sample(x, grid, mode, padding, align_corners, backend=backend), expected.detach())
        if case == "grid" and layout != "inf-voxel":  # the independent reference
            reference = torch.nn.functional.grid_sample(x, grid, mode, padding, align_corners)
            torch.testing.assert_close(out.detach(), reference, atol=1e-5 if dtype == torch.float32 else 1e-12,
                                       rtol=0)


@pytest.mark.usefixtures("volume_call")
def _affine3d_cases(dtype):
    affine = stn.Affine3D()
    theta = random_theta(affine, 2, dtype, scale=0.3, seed=4)
    return {
        "params": (theta, affine),
        "rows": (theta.view(2, 3, 4), affine),
        "rows-view": (torch.cat([theta, theta], 1)[:, ::2], affine),  # non-contiguous parameters
        "name": (theta, "affine3d"),
        "nan": (torch.where(torch.arange(12) == 5, float("nan"), theta), affine),
    }


@pytest.mark.usefixtures("volume_call")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["params", "rows", "rows-view", "name", "nan"])
@pytest.mark.parametrize("layout", ["contiguous", "view", "inf-voxel"])
def test_the_compiled_affine3d_warp_gives_the_python_paths_bits(dtype, case, layout, without_fast_call):
    """Affine3D's warp by the compiled call (the voxels' coordinates made in C++, as the base grid
    makes them): values and gradients bit for bit as the 3-D operator's Python path; and
    F.affine_grid + F.grid_sample's values."""
    x = _volumes(dtype)[layout]
    theta, transform = _affine3d_cases(dtype)[case]
    options = [(None, "bilinear", "zeros", False, None), ((4, 3, 5), "bilinear", "border", True, "auto"),
               ((2, 6, 1), "nearest", "reflection", False, "fused"), ((5, 6, 7), "nearest", "zeros", True, None)]
    for size, mode, padding, align_corners, backend in options:
        assert _taken(x, theta, transform, size, mode, padding, align_corners, backend)
        xs, ts = x.clone().requires_grad_(), theta.clone().requires_grad_()
        out = stn.warp(xs, ts, transform, size, mode, padding, align_corners, backend=backend)
        assert out.grad_fn.name() == "torchstn::Warp3dBackward"
        expected = without_fast_call(lambda: stn.warp(xs, ts, transform, size, mode, padding, align_corners,
                                                      backend="fused"))
        _same(out, expected)
        g = random_input(out.shape, dtype, seed=8)
        for a, b in zip(torch.autograd.grad(out, (xs, ts), g), torch.autograd.grad(expected, (xs, ts), g)):
            _same(a, b)
        if case in ("params", "rows") and layout != "inf-voxel":  # the independent reference
            grid = torch.nn.functional.affine_grid(theta.reshape(2, 3, 4), (2, 3, *(size or x.shape[2:])),
                                                   align_corners)
            reference = torch.nn.functional.grid_sample(x, grid, mode, padding, align_corners)
            torch.testing.assert_close(out.detach(), reference, atol=1e-5 if dtype == torch.float32 else 1e-12,
                                       rtol=0)


def test_the_volume_node_hands_create_graph_and_batched_gradients_to_the_grid_path():
    x = random_input((2, 2, 4, 5, 3), torch.float64).requires_grad_()
    grid = random_grid((2, 3, 2, 4, 3), torch.float64, spread=1.2).requires_grad_()
    assert stn.sample(x, grid).grad_fn.name() == "torchstn::Warp3dBackward"
    assert torch.autograd.gradcheck(lambda a, b: stn.sample(a, b), (x, grid), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: stn.sample(a, b), (x, grid))
    theta = random_theta(stn.Affine3D(), 2, torch.float64, scale=0.3).requires_grad_()
    assert stn.warp(x, theta, "affine3d").grad_fn.name() == "torchstn::Warp3dBackward"
    for loc in (theta, theta.view(2, 3, 4)):
        assert torch.autograd.gradcheck(lambda a, b: stn.warp(a, b, "affine3d", (3, 2, 4)), (x, loc),
                                        check_batched_grad=True)
        assert torch.autograd.gradgradcheck(lambda a, b: stn.warp(a, b, "affine3d", (3, 2, 4)), (x, loc))
    penalties = {}
    for backend in (None, "torch"):  # a gradient penalty: the gradient's graph reaches the grid
        (gx,) = torch.autograd.grad(stn.sample(x, grid, backend=backend).square().sum(), x, create_graph=True)
        (penalties[backend],) = torch.autograd.grad(gx.square().sum(), grid)
    torch.testing.assert_close(penalties[None], penalties["torch"])


@pytest.mark.usefixtures("volume_call")
def test_the_volume_node_saves_inference_tensors_and_reads_what_hooks_hand_back():
    x = torch.rand(2, 1, 5, 5, 5, dtype=torch.float64, requires_grad=True)
    with torch.inference_mode():
        grid = random_grid((2, 3, 3, 3, 3), torch.float64)
    out = stn.sample(x, grid)
    assert out.grad_fn.name() == "torchstn::Warp3dBackward"
    out.sum().backward()
    expected = torch.autograd.grad(stn.sample(x, grid.clone(), backend="torch").sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)
    grid = random_grid((2, 3, 3, 3, 3), torch.float64).requires_grad_()
    grads = {}
    for backend in (None, "torch"):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: torch._neg_view(-t)):
            out = stn.sample(x, grid, backend=backend)
        grads[backend] = torch.autograd.grad(out, (x, grid), torch.linspace(-1, 1, out.numel()).double().view_as(out))
    for a, b in zip(grads[None], grads["torch"]):
        torch.testing.assert_close(a, b)
    zero = torch._efficientzerotensor(out.shape, dtype=out.dtype)
    for grad in torch.autograd.grad(stn.sample(x, grid), (x, grid), zero):
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.usefixtures("fused3d_kernel")
def test_the_3d_kernel_reaches_the_compiled_call_whichever_is_loaded_first(monkeypatch):
    """The compiled call and the 3-D kernel are built on first use, in either order: whichever
    comes second hands the kernel over (the module loaded first by a 2-D call, or by a volume's)."""
    from torchstn.sampling import _fused3d

    calls = []
    monkeypatch.setattr(_fused3d, "_hand_to_fast_call", lambda fast: calls.append(fast))
    monkeypatch.setattr(_fused, "FAST_CALL_LOADED", [_fused3d._hand_to_fast_call])
    with monkeypatch.context() as m:  # the compiled call loaded second: fast_call hands the kernel over
        m.setitem(_fused._library.state, "fast", None)
        fast = _fused.fast_call()
    assert calls == [fast]
    with monkeypatch.context() as m:  # the 3-D kernel built second: its build hands itself over
        m.setattr(_fused3d, "_build", _fused3d._build)
        m.setattr(_fused3d, "load_kernel", lambda *args: _fused3d._library())
        m.setattr(_fused3d, "bind_entries", lambda lib, *args: lib)
        _fused3d._build()
    assert calls == [fast, _fused._library.state["fast"]]


@pytest.mark.usefixtures("volume_call")
@pytest.mark.parametrize("compiled_call", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("case", ["warp", "sample", "warp3d", "sample3d"])
def test_an_output_gradient_of_a_tensor_subclass_takes_the_differentiable_path(case, compiled_call, without_fast_call):
    """A wrapper subclass (TwoTensor) has no storage of its own: the fused operators' Python
    backward handed its null pointer to the kernel and the process crashed (a helper found it);
    the compiled call's nodes send it to the differentiable expression, the Python formula now to
    the registered operator (the dispatcher hands the subclass its components): the subclass's
    gradients on both paths, each component the torch backend's."""
    from torch.testing._internal.two_tensor import TwoTensor

    volume = case.endswith("3d")
    x = random_input((2, 2, 4, 5, 3) if volume else (2, 2, 5, 6), torch.float64).requires_grad_()
    transform = stn.Affine3D() if volume else stn.Affine()
    loc = (random_grid((2, 3, 2, 4, 3) if volume else (2, 3, 4, 2), torch.float64) if case.startswith("sample")
           else random_theta(transform, 2, torch.float64, scale=0.3)).requires_grad_()

    def run(backend=None):
        if case.startswith("sample"):
            return stn.sample(x, loc, backend=backend)
        return stn.warp(x, loc, transform, backend=backend)

    out = run() if compiled_call else without_fast_call(run)
    g, h = random_input(out.shape, torch.float64, seed=3), random_input(out.shape, torch.float64, seed=4)
    grads = torch.autograd.grad(out, (x, loc), TwoTensor(g, h))
    reference = run("torch")
    for grad, expected_a, expected_b in zip(grads, torch.autograd.grad(reference, (x, loc), g, retain_graph=True),
                                             torch.autograd.grad(reference, (x, loc), h)):
        assert type(grad) is TwoTensor
        torch.testing.assert_close(grad.a, expected_a)
        torch.testing.assert_close(grad.b, expected_b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["grid", "view", "nan", "inf"])
@pytest.mark.parametrize("layout", ["nchw", "channels-last", "view"])
def test_the_compiled_sample_gives_atens_calls_the_python_paths_bits(dtype, case, layout, without_fast_call):
    """Bicubic, and nearest beyond the points "auto" gives the kernel, are F.grid_sample's: the
    compiled call calls ATen's sampler itself where torch_sample would call it directly (its NaN at
    a non-finite point is torchstn's there, or the grid has none), the same bits and gradients as
    the Python path; a grid it would sample carefully is left to it."""
    x = _inputs(dtype)[layout]
    many = random_grid((3, 130, 130, 2), dtype, spread=1.3, seed=2)
    grids = {"grid": (_grids(dtype)["grid"], many), "view": (_grids(dtype)["view"], many.transpose(1, 2)),
             "nan": (_grids(dtype)["nan"], _with_nan(many)), "inf": (_grids(dtype)["inf"], many * 0 - math.inf)}
    few, many = grids[case]
    finite = case in ("grid", "view")
    for grid, mode, padding, align_corners, backend in [(few, "bicubic", "zeros", False, None),
                                                        (few, "bicubic", "border", True, "fused"),
                                                        (few, "bicubic", "reflection", False, "auto"),
                                                        (many, "nearest", "zeros", True, None),
                                                        (many, "nearest", "reflection", False, "auto")]:
        for with_gradient in (False, True):
            careful = not finite and (with_gradient or padding != "zeros" or mode == "nearest")
            xs, gs = x.clone().requires_grad_(with_gradient), grid.clone().requires_grad_(with_gradient)
            assert _sampled(xs, gs, mode, padding, align_corners, backend) != careful
            out = stn.sample(xs, gs, mode, padding, align_corners, backend=backend)
            expected = without_fast_call(lambda: stn.sample(xs, gs, mode, padding, align_corners, backend=backend))
            _same(out, expected)
            if with_gradient:
                g = torch.rand_like(out)
                for a, b in zip(torch.autograd.grad(out, (xs, gs), g), torch.autograd.grad(expected, (xs, gs), g)):
                    _same(a, b)
            if finite:  # the independent reference
                reference = torch.nn.functional.grid_sample(x, grid, mode, padding, align_corners)
                torch.testing.assert_close(out.detach(), reference, rtol=0, atol=0)


def test_the_compiled_bicubic_sample_of_a_signal_gives_the_python_paths_bits(without_fast_call):
    """A signal's bicubic sample is lifted to an image of height 1 before ATen's sampler reads it,
    as the Python path lifts it: the same bits and gradients, with every padding."""
    x = random_input((3, 2, 11), torch.float64, seed=5).requires_grad_()
    grid = random_grid((3, 7, 1), torch.float64, spread=1.3, seed=6).requires_grad_()
    for padding in ("zeros", "border", "reflection"):
        for loc in (grid, grid.detach()):
            assert _sampled(x, loc, "bicubic", padding)
            out = stn.sample(x, loc, "bicubic", padding)
            expected = without_fast_call(lambda: stn.sample(x, loc, "bicubic", padding))
            _same(out, expected)
            wrt = [t for t in (x, loc) if t.requires_grad]
            for a, b in zip(torch.autograd.grad(out.sum(), wrt), torch.autograd.grad(expected.sum(), wrt)):
                _same(a, b)


def _node_calls():
    """name -> (call, its inputs that take a gradient): every call the compiled call's nodes record."""
    x2, x3 = random_input((2, 3, 6, 7), torch.float64, seed=1), random_input((2, 2, 4, 5, 3), torch.float64, seed=2)
    theta2 = random_theta(stn.Affine(), 2, torch.float64, scale=0.3)
    theta3 = random_theta(stn.Affine3D(), 2, torch.float64, scale=0.3)
    grid2 = random_grid((2, 5, 4, 2), torch.float64, spread=1.2)
    grid3 = random_grid((2, 3, 2, 4, 3), torch.float64, spread=1.2)
    similarity = torch.stack([theta2[:, 0], 3 * theta2[:, 1], theta2[:, 2], theta2[:, 5]], 1)
    return {
        "warp": (lambda a, b: stn.warp(a, b, "affine", (5, 4)), (x2, theta2), "torchstn::Warp2dBackward"),
        # (a family whose rows the node makes: its gradient taken to the parameters)
        "similarity": (lambda a, b: stn.warp(a, b, "similarity", (5, 4)), (x2, similarity), "torchstn::Warp2dBackward"),
        "attention": (lambda a, b: stn.warp(a, b, "attention", (5, 4)), (x2, theta2[:, [0, 2, 5]]),
                      "torchstn::Warp2dBackward"),
        "sample": (lambda a, b: stn.sample(a, b), (x2, grid2), "torchstn::Warp2dBackward"),
        "warp3d": (lambda a, b: stn.warp(a, b, "affine3d", (3, 2, 4)), (x3, theta3), "torchstn::Warp3dBackward"),
        "sample3d": (lambda a, b: stn.sample(a, b), (x3, grid3), "torchstn::Warp3dBackward"),
    }


@pytest.mark.usefixtures("volume_call")
@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("name", ["warp", "similarity", "attention", "sample", "warp3d", "sample3d"])
def test_the_autograd_nodes_keep_autograds_rules(name):
    """The nodes are plain autograd nodes (torch::autograd::Node, not a Function's CppNode): a
    second backward through a freed graph, an input changed in place after the call and anomaly
    mode behave as with F.grid_sample's node, and only the gradients asked for are computed."""
    call, inputs, node = _node_calls()[name]
    a, b = (t.clone().requires_grad_() for t in inputs)
    out = call(a, b)
    assert out.grad_fn.name() == node
    assert [edge[0] is not None for edge in out.grad_fn.next_functions] == [True, True]
    out.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()
    out = call(a, b)
    with torch.no_grad():
        b.mul_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    with torch.autograd.detect_anomaly(check_nan=False):
        out = call(a, b)
        assert out.grad_fn.metadata is not None
    # only b's gradient: a without requires_grad has no edge, and b's gradient is the one both give
    a = inputs[0].clone()
    out = call(a, b)
    assert out.grad_fn.next_functions[0][0] is None
    g = torch.rand_like(out)
    (gb,) = torch.autograd.grad(out, b, g)
    _, expected = torch.autograd.grad(call(a.requires_grad_(), b), (a, b), g)
    torch.testing.assert_close(gb, expected, rtol=0, atol=0)


@pytest.mark.usefixtures("volume_call")
@pytest.mark.parametrize("name", ["warp", "similarity", "attention", "sample", "warp3d", "sample3d"])
def test_compiled_autograd_runs_the_nodes_with_the_eager_gradients(name):
    """Compiled autograd (torch._dynamo.compiled_autograd) calls each node as one opaque call in its
    graph: the gradients of an eager forward's graph are the eager backward's, bit for bit."""
    from torch._dynamo import compiled_autograd

    call, inputs, node = _node_calls()[name]
    leaves = [t.clone().requires_grad_() for t in inputs]
    g = torch.rand_like(call(*inputs))
    expected = torch.autograd.grad(call(*leaves), leaves, g)
    torch._dynamo.reset()
    out = call(*leaves)
    assert out.grad_fn.name() == node
    with compiled_autograd._enable(lambda graph: graph):
        out.backward(g)
    torch._dynamo.reset()
    for leaf, want in zip(leaves, expected):
        torch.testing.assert_close(leaf.grad, want, rtol=0, atol=0)


@pytest.mark.usefixtures("volume_call")
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("name", ["warp", "similarity", "attention", "sample", "warp3d", "sample3d"])
def test_activation_checkpointing_through_the_nodes_gives_the_eager_gradients(name, reentrant):
    """torch.utils.checkpoint (its saved-tensor hooks, or the reentrant forward run again) through
    each node: the gradients of the eager backward, bit for bit."""
    from torch.utils.checkpoint import checkpoint

    call, inputs, node = _node_calls()[name]
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = call(*leaves)
    assert out.grad_fn.name() == node
    expected = torch.autograd.grad(out.sin().sum(), leaves)
    leaves = [t.clone().requires_grad_() for t in inputs]
    checkpoint(lambda a, b: call(a, b).sin(), *leaves, use_reentrant=reentrant).sum().backward()
    for leaf, want in zip(leaves, expected):
        torch.testing.assert_close(leaf.grad, want, rtol=0, atol=0)


@pytest.mark.usefixtures("volume_call")
@pytest.mark.parametrize("name", ["warp", "similarity", "attention", "sample", "warp3d", "sample3d"])
def test_an_undefined_output_gradient_gives_no_gradient_as_torchs_own_node(name):
    """A function after the warp that hands back no gradient for it (None): the node adds none,
    as F.grid_sample's node does, even where x holds an inf (zeros run through the kernel gave
    0 * inf = NaN in the location's gradient)."""

    class Drop(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):  # noqa: ANN001, ANN205
            return t.clone()

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            return None

    call, inputs, node = _node_calls()[name]
    x, loc = inputs[0].clone(), inputs[1].clone().requires_grad_()
    x.view(-1)[::7] = float("inf")
    out = call(x, loc)
    assert out.grad_fn.name() == node
    (Drop.apply(out).sum() + loc.sum()).backward()
    torch.testing.assert_close(loc.grad, torch.ones_like(loc), rtol=0, atol=0)
