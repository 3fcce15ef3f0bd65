"""The grid caches never leak across modes: inference mode, no_grad and training in any order."""

import pytest
import torch

import torchstn as stn
from torchstn import _tracing

FAMILIES = [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(),
            stn.ThinPlateSpline(control=(3, 3)), stn.Affine3D(), stn.Affine1D()]


def _input(transform: stn.Transform) -> torch.Tensor:
    shape = {1: (2, 2, 11), 2: (2, 2, 9, 10), 3: (2, 2, 5, 6, 7)}[transform.ndim]
    return torch.rand(*shape)


@pytest.mark.parametrize("backend", ["fused", "torch", "reference"])
@pytest.mark.parametrize("transform", FAMILIES, ids=lambda t: t.name)
def test_inference_mode_then_training_then_no_grad_then_training(transform, backend):
    stn.clear_caches()  # every grid part is built for the first time under inference_mode
    x = _input(transform)
    theta = transform.identity(2) + 0.05
    with torch.inference_mode():
        evaluated = stn.warp(x, theta, transform, backend=backend)
    for step in range(2):
        leaf = theta.clone().requires_grad_()
        out = stn.warp(x, leaf, transform, backend=backend)
        out.square().sum().backward()  # would raise "Inference tensors cannot be saved for backward"
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0
        torch.testing.assert_close(out.detach(), evaluated)
        with torch.no_grad():
            torch.testing.assert_close(stn.warp(x, theta, transform, backend=backend), evaluated)


@pytest.mark.parametrize("backend", ["fused", "torch", "reference"])
@pytest.mark.parametrize("transform", FAMILIES, ids=lambda t: t.name)
def test_theta_made_under_inference_mode_warps_an_input_that_needs_gradients(transform, backend):
    """θ from a localisation net run under inference_mode, then a warp whose input needs
    gradients: it works as F.affine_grid + F.grid_sample does, on every backend."""
    with torch.inference_mode():
        frozen = transform.identity(2) + 0.05
    leaf = _input(transform).requires_grad_()
    stn.warp(leaf, frozen, transform, backend=backend).square().sum().backward()
    assert leaf.grad.abs().sum() > 0


def test_entries_are_never_inference_tensors():
    stn.clear_caches()
    with torch.inference_mode():
        grid = stn.base_grid((4, 5))
    assert not grid.is_inference()
    assert all(not value.is_inference() for value, _ in _tracing._CACHE.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["fused", "torch", "reference"])
def test_transforms_built_under_inference_mode_work_in_every_mode(backend, dtype):
    """A CPAB1D or ThinPlateSpline built under inference_mode (a model built in an eval-only
    script) kept its float64 basis / spline solution as inference tensors, which the cache
    then handed out as they were (``.to()`` of the same dtype returns its input): "Inference
    tensors do not track version counter" in every later call, in any mode."""
    stn.clear_caches()
    with torch.inference_mode():
        built = [stn.CPAB1D(tessellation=4), stn.ThinPlateSpline(control=(3, 3)),
                 stn.ThinPlateSpline(control=torch.tensor([[-1.0, -1], [1, -1], [0, 1]]))]
    for transform in built:
        fresh = type(transform)(tessellation=4) if isinstance(transform, stn.CPAB1D) else stn.ThinPlateSpline(
            control=transform.control_points)
        x = _input(transform).to(dtype)
        theta = (transform.identity(2, dtype=dtype) + 0.05).requires_grad_()
        out = stn.warp(x, theta, transform, backend=backend)
        out.square().sum().backward()
        expected = (fresh.identity(2, dtype=dtype) + 0.05).requires_grad_()
        stn.warp(x, expected, fresh, backend=backend).square().sum().backward()
        torch.testing.assert_close(theta.grad, expected.grad)
        points = torch.rand(2, 5, transform.ndim, dtype=dtype) * 2 - 1
        torch.testing.assert_close(transform.transform_points(theta, points), fresh.transform_points(theta, points))
        with torch.inference_mode():
            torch.testing.assert_close(stn.warp(x, theta, transform, backend=backend), out.detach())
    assert all(not value.is_inference() for value, _ in _tracing._CACHE.values())
    with torch.inference_mode():
        made = torch.ones(3)
    kept = _tracing.cached(("test", "inference"), lambda: made)  # a build that returns one is not trusted
    assert not kept.is_inference() and not _tracing.cached(("test", "inference"), lambda: None).is_inference()


def test_an_entry_modified_in_place_is_rebuilt():
    stn.clear_caches()
    grid = stn.base_grid((3, 4))
    expected = grid.clone()
    grid.add_(1.0)  # the docstring says not to; if a user does, the next call does not see it
    torch.testing.assert_close(stn.base_grid((3, 4)), expected)


def test_the_cache_is_bounded_and_can_be_cleared():
    stn.clear_caches()
    for n in range(1, 200):
        stn.base_grid((n, 2))
    assert len(_tracing._CACHE) == _tracing._CACHE_SIZE
    stn.clear_caches()
    assert len(_tracing._CACHE) == 0
    torch.testing.assert_close(stn.base_grid((1, 2)), torch.tensor([[-0.5, 0.0], [0.5, 0.0]]))


def test_the_cache_is_bounded_in_bytes(monkeypatch):
    """128 entries held gigabytes where they were large (a thin-plate spline's grid operator is
    12 MB at 224x224, 49 MB with 8x8 control points): the oldest go first beyond the byte
    bound too, and an entry larger than the whole bound is kept alone (rebuilt at every call,
    a TPS operator at 600x600 took 3 s where the cached one takes 37 ms)."""
    monkeypatch.setattr(_tracing, "_CACHE_BYTES", 1000)
    stn.clear_caches()
    for n in range(5):  # 400 bytes each: two fit
        _tracing.cached(("bytes", n), lambda: torch.zeros(100))
    assert list(_tracing._CACHE) == [("bytes", 3), ("bytes", 4)]
    big = _tracing.cached(("big",), lambda: torch.zeros(300))
    assert list(_tracing._CACHE) == [("big",)] and _tracing.cached(("big",), lambda: torch.ones(1)) is big
    stn.clear_caches()
    tps = stn.ThinPlateSpline()
    grid = tps.grid(tps.identity(1), (20, 20))  # 16 K H W = 102,400 bytes: kept, alone
    torch.testing.assert_close(grid.flatten(1, 2)[0], stn.base_grid((20, 20)), atol=1e-6, rtol=0)
    assert len(_tracing._CACHE) == 1


def test_tracing_questions_tell_eager_from_torch_func():
    x = torch.rand(3, 2)
    assert _tracing.eager_tensors(x) and not _tracing.in_functorch(x)
    seen = []

    def probe(t):
        seen.append((_tracing.in_functorch(t), _tracing.eager_tensors(t), _tracing.in_functorch(x)))
        return t.sum()

    torch.func.vmap(probe)(x)
    torch.func.grad(probe)(x)
    # inside vmap and grad the argument is wrapped; a tensor captured from outside is not
    assert seen == [(True, False, False), (True, False, False)]


def test_modes_that_record_are_not_eager_but_torch_device_is():
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Function(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x, w = torch.rand(3, 2), torch.nn.Parameter(torch.rand(2))
    assert _tracing.eager_tensors(x, w)
    with torch.device("cpu"):  # picks the device of factory functions only: still plain eager
        assert _tracing.eager_tensors(x, w)
        with Function():
            assert not _tracing.eager_tensors(x)
    with Function():
        assert not _tracing.eager_tensors(x)
    with Dispatch():
        assert not _tracing.eager_tensors(x)
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        assert not _tracing.eager_tensors(x)
    assert not _tracing.eager_tensors(x.as_subclass(type("Sub", (torch.Tensor,), {})))


def test_differentiable_vjp_gives_a_differentiable_gradient():
    a = torch.tensor([1.5, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5, 3.0], dtype=torch.float64)
    grad_a, grad_b = _tracing.differentiable_vjp(lambda a, b: a**3 * b, (a, b), torch.ones(2, dtype=torch.float64),
                                                 (True, False))
    assert grad_b is None
    torch.testing.assert_close(grad_a, 3 * a.detach() ** 2 * b)
    (second,) = torch.autograd.grad(grad_a.sum(), a)  # the gradient's own graph was recorded
    torch.testing.assert_close(second, 6 * a.detach() * b)


@pytest.mark.parametrize("transform", [stn.Affine(), stn.ThinPlateSpline(control=(3, 3))], ids=["affine", "tps"])
def test_a_cache_miss_inside_fullgraph_compile_builds_and_keeps_nothing(transform):
    """A compiled model meeting a new size builds its grid parts in the graph (dynamo cannot ask for the
    inference mode, which a cold cache used to do: fullgraph compile then failed)."""
    stn.clear_caches()
    theta = transform.identity(batch=2) + 0.05 * torch.randn(2, transform.num_params)
    compiled = torch.compile(lambda p: transform.grid(p, (13, 17)), fullgraph=True, backend="eager")
    out = compiled(theta)
    assert len(_tracing._CACHE) == 0  # traced values are never stored
    torch.testing.assert_close(out, transform.grid(theta, (13, 17)))


def test_grid_parts_built_inside_torch_func_are_not_kept():
    """A grid part first built inside ``torch.func.grad`` is the transform's wrapper, dead once
    it returns: kept, it made a later ``torch.func.hessian`` fail with an internal assert of
    functorch ("escaped?"). Built there, used, never stored."""
    x = torch.rand(2, 1, 6, 7, dtype=torch.float64)
    theta = stn.Affine().identity(batch=2, dtype=torch.float64) + 0.05
    energy = lambda t: stn.warp(x, t, "affine").pow(2).sum()  # noqa: E731
    stn.clear_caches()
    gradient = torch.func.grad(energy)(theta)
    assert not any(torch.func.debug_unwrap(value, recurse=False) is not value for value, _ in _tracing._CACHE.values())
    hessian = torch.func.hessian(energy)(theta)
    torch.testing.assert_close(hessian, torch.autograd.functional.hessian(energy, theta))
    torch.testing.assert_close(gradient, torch.autograd.functional.jacobian(energy, theta))


def test_threads_that_evict_at_once_do_not_raise(monkeypatch):
    """Two threads missing at a full cache both took its oldest key and deleted it: the second
    deletion raised KeyError out of warp (another thread's insertion during the eviction's
    iteration a RuntimeError). Insertions and evictions hold a lock. The iteration here waits
    for a second thread (up to 0.5 s), which reaches it only where nothing serialises them."""
    import threading

    from torchstn import _tracing

    barrier = threading.Barrier(2)

    class MeetingDict(dict):
        def __iter__(self):  # the oldest key as this thread sees it, then a wait for the other thread
            oldest = list(super().__iter__())[:1]
            try:
                barrier.wait(timeout=0.5)
            except threading.BrokenBarrierError:
                pass
            return iter(oldest)

    full = MeetingDict({("filler", i): (torch.zeros(1), 0) for i in range(_tracing._CACHE_SIZE)})
    monkeypatch.setattr(_tracing, "_CACHE", full)
    errors = []

    def miss(k):
        try:
            _tracing.cached(("thread", k), lambda: torch.full((2,), float(k)))
        except Exception as err:  # noqa: BLE001 - any error is the failure
            errors.append(err)

    threads = [threading.Thread(target=miss, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(full) == _tracing._CACHE_SIZE
    assert {("thread", 0), ("thread", 1)} <= full.keys()
