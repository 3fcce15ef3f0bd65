"""ParallelSpatialTransformers: K independent heads on one input, concatenated or listed."""

import pytest
import torch
from torch import nn

import torchstn as stn
from tests._helpers import perturb


def _heads(k: int = 2, channels: int = 2, size: tuple[int, int] = (16, 16), **kw) -> list[stn.SpatialTransformer]:
    torch.manual_seed(0)
    return [stn.SpatialTransformer("affine", stn.conv_localization(channels, size), **kw) for _ in range(k)]


def test_two_transformers_give_two_independent_thetas():
    heads = _heads()
    with torch.no_grad():  # make the heads differ: one looks at the input, one stays the identity
        heads[0].regressor.weight.normal_(0, 0.1)
    par = stn.ParallelSpatialTransformers(heads, merge="list")
    x = torch.rand(3, 2, 16, 16)
    outs, thetas = par(x, return_params=True)
    assert len(outs) == len(thetas) == 2
    assert thetas[0] is heads[0].last_params and thetas[1] is heads[1].last_params
    assert not torch.allclose(thetas[0], thetas[1])
    torch.testing.assert_close(thetas[1], stn.Affine().identity(3))
    torch.testing.assert_close(outs[1], x, atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[0], heads[0].transform_input(x, thetas[0]))
    # independent: a loss on head 0's output sends no gradient to head 1
    outs[0].sum().backward()
    assert heads[0].regressor.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in heads[1].parameters())


def test_concat_joins_channels_in_order():
    heads = _heads(k=3, output_size=(8, 8))
    par = stn.ParallelSpatialTransformers(heads)  # concat by default
    x = torch.rand(2, 2, 16, 16)
    out = par(x)
    assert out.shape == (2, 6, 8, 8)
    for k, head in enumerate(heads):
        torch.testing.assert_close(out[:, 2 * k : 2 * k + 2], head(x))
    assert [t.shape for t in par.predict_params(x)] == [torch.Size([2, 6])] * 3


def test_concat_needs_one_output_size():
    heads = _heads(k=1, output_size=(8, 8)) + _heads(k=1, output_size=(4, 4))
    with pytest.raises(ValueError, match="one spatial size"):
        stn.ParallelSpatialTransformers(heads, merge="concat")(torch.rand(1, 2, 16, 16))
    outs = stn.ParallelSpatialTransformers(heads, merge="list")(torch.rand(1, 2, 16, 16))
    assert [o.shape[-1] for o in outs] == [8, 4]
    # a P-STN head gives S·B outputs beside a plain head's B: torch.cat's own error named neither
    pstn = stn.ProbabilisticSpatialTransformer("affine", stn.conv_localization(2, (16, 16)), samples=2)
    with pytest.raises(ValueError, match=r"merge='concat' needs outputs of one batch size, got \[2, 4\]"):
        stn.ParallelSpatialTransformers(_heads(k=1) + [pstn])(torch.rand(2, 2, 16, 16))


def test_bad_arguments():
    with pytest.raises(ValueError, match="merge"):
        stn.ParallelSpatialTransformers(_heads(k=1), merge="sum")
    with pytest.raises(ValueError, match="non-empty"):
        stn.ParallelSpatialTransformers([])
    with pytest.raises(TypeError, match="sequence"):
        stn.ParallelSpatialTransformers(nn.Identity())
    with pytest.raises(TypeError, match=r"sequence of nn.Module, got \['Identity', 'function'\]"):
        stn.ParallelSpatialTransformers([nn.Identity(), lambda x: x])


def test_predict_params_of_a_head_without_one_is_none():
    """A head that is any warping module (the docstring allows it) has no θ: last_params gave
    None for it, predict_params an AttributeError."""
    par = stn.ParallelSpatialTransformers(_heads(k=1) + [nn.Identity()])
    x = torch.rand(2, 2, 16, 16)
    theta, none = par.predict_params(x)
    assert theta.shape == (2, 6) and none is None


def test_concat_exports_with_a_dynamic_batch():
    """Its size checks gathered torch.export's symbolic sizes in a set ("unhashable type:
    non-nested SymInt"): a dynamic batch, which the README promises, did not export."""
    par = stn.ParallelSpatialTransformers(_heads(k=2), merge="concat").eval()
    program = torch.export.export(par, (torch.rand(3, 2, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    x = torch.rand(5, 2, 16, 16)
    torch.testing.assert_close(program.module()(x), par(x))


def test_an_exported_parallel_module_returns_the_params_of_its_input():
    """With return_params=True the heads' θ came from their last_params, which a head does not
    record under torch.export: the exported program returned the θ of the last eager call, frozen
    as constants (or None on a fresh module), whatever its input."""
    torch.manual_seed(0)
    heads = [stn.SpatialTransformer("affine", stn.conv_localization(1, (8, 8))) for _ in range(2)]
    for head in heads:
        perturb(head)
    parallel = stn.ParallelSpatialTransformers(heads).eval()
    x1, x2 = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    parallel(x1)
    exported = torch.export.export(parallel, (x1,), {"return_params": True}).module()
    out, thetas = exported(x2, return_params=True)
    expected_out, expected = parallel(x2, return_params=True)
    torch.testing.assert_close(out, expected_out)
    for theta, want in zip(thetas, expected):
        torch.testing.assert_close(theta, want)
