"""stn.nn.conv2d / stn.nn.Conv2d: F.conv2d's values and gradients, the input gradient on
ATen's direct path where it applies, F.conv2d itself everywhere else."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchstn as stn

DIRECT = "_DirectInputGradBackward"


def _pair_of_convs(in_channels: int, dtype: torch.dtype, **options) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    ours = stn.nn.Conv2d(in_channels, 6, 3, **options).to(dtype)
    plain = nn.Conv2d(in_channels, 6, 3, **options).to(dtype)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def _input(in_channels: int, dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
    x = torch.rand(3, in_channels, 11, 10, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def _gradients(conv: nn.Conv2d, x: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = conv(x)
    torch.manual_seed(seed)
    grad_out = torch.randn_like(out)
    wanted = [x, *(p for p in conv.parameters() if p.requires_grad)]
    return out, list(torch.autograd.grad(out, wanted, grad_out))


@pytest.mark.parametrize("in_channels", [1, 2, 4])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("options", [{}, {"padding": 1, "stride": 2}, {"padding": 2, "bias": False},
                                     {"padding": 1, "padding_mode": "reflect"}])
def test_few_input_channels_take_the_direct_input_gradient_with_the_values_and_gradients_of_torch(
    in_channels, channels_last, options, dtype
):
    ours, plain = _pair_of_convs(in_channels, dtype, **options)
    x = _input(in_channels, dtype, channels_last)
    out, grads = _gradients(ours, x)
    expected_out, expected_grads = _gradients(plain, x)
    assert type(out.grad_fn).__name__ == DIRECT
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    torch.testing.assert_close(out, expected_out, **tol)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, **tol)
    assert grads[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_a_frozen_weight_gets_no_gradient_and_the_input_its_own():
    ours, plain = _pair_of_convs(1, torch.float64, padding=1)
    ours.requires_grad_(False)
    plain.requires_grad_(False)
    x = _input(1, torch.float64)
    out, (grad_x,) = _gradients(ours, x)
    assert type(out.grad_fn).__name__ == DIRECT
    torch.testing.assert_close(grad_x, _gradients(plain, x)[1][0])


def test_float64_gradients_and_second_order_gradients_against_finite_differences():
    x = _input(2, torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: stn.nn.conv2d(x, w, b, 2, 1)  # noqa: E731
    assert type(fn(x, w, b).grad_fn).__name__ == DIRECT
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_second_order_when_the_input_depends_on_the_weight():
    """A layer applied twice (weight tying): under create_graph the direct path's backward took
    the gradient wrt its saved weight through the input too, which depends on it (counted
    again by the outer backward): dL/dW 2.1 off nn.Conv2d's. Equal now, first and second order."""
    ours, plain = _pair_of_convs(2, torch.float64, padding=1)
    back = nn.Conv2d(6, 2, 1, bias=False).double()  # (6 channels back to the layer's 2)
    x0 = torch.rand(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for conv in (ours, plain):
        x = x0.clone().requires_grad_()
        out = conv(back(torch.tanh(conv(x))))  # the same layer twice
        gw, gx = torch.autograd.grad(out.square().sum(), (conv.weight, x), create_graph=True)
        (penalty,) = torch.autograd.grad(gx.pow(2).sum(), conv.weight)
        results.append((gw.detach(), gx.detach(), penalty))
    torch.testing.assert_close(results[0], results[1], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", ["five channels", "groups", "dilation", "same padding", "no input gradient",
                                  "no grad mode", "autocast"])
def test_everything_else_is_f_conv2d_itself(case):
    in_channels = 5 if case == "five channels" else 2
    options = {"groups": 2} if case == "groups" else {"dilation": 2} if case == "dilation" else {}
    if case == "same padding":
        options["padding"] = "same"
    ours, plain = _pair_of_convs(in_channels, torch.float32, **options)
    x = _input(in_channels, torch.float32).requires_grad_(case != "no input gradient")
    with torch.no_grad() if case == "no grad mode" else torch.autocast("cpu", enabled=case == "autocast"):
        out, expected = ours(x), plain(x)
    assert out.grad_fn is None if case == "no grad mode" else type(out.grad_fn).__name__ != DIRECT
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_inference_mode_compile_and_torch_func_see_f_conv2d():
    ours, plain = _pair_of_convs(1, torch.float32, padding=1)
    x = torch.rand(2, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), plain(x), atol=0, rtol=0)
    grad = torch.func.grad(lambda x: ours(x).square().sum())(x)
    torch.testing.assert_close(grad, torch.func.grad(lambda x: plain(x).square().sum())(x))
    compiled = torch.compile(ours, backend="eager", fullgraph=True)
    xg = x.clone().requires_grad_()
    compiled(xg).square().sum().backward()
    expected = x.clone().requires_grad_()
    plain(expected).square().sum().backward()
    torch.testing.assert_close(xg.grad, expected.grad)


def test_a_drop_in_replacement_state_dict_copies_and_pickle():
    ours, plain = _pair_of_convs(1, torch.float32, padding=1)
    assert isinstance(ours, nn.Conv2d) and ours.state_dict().keys() == plain.state_dict().keys()
    x = _input(1, torch.float32)
    out = ours(x)  # a graph alive while copying
    for copied in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(copied) is stn.nn.Conv2d
        torch.testing.assert_close(copied(x), out, atol=0, rtol=0)
    out.sum().backward()


def test_the_models_convolutions_after_a_transformer_are_torchstns_and_train_as_plain_ones():
    torch.manual_seed(0)
    model = stn.create_model("st-cnn-aff")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is stn.nn.Conv2d for m in convs)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if type(m) is stn.nn.Conv2d:
            m.__class__ = nn.Conv2d
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    losses = []
    for net in (model, plain):
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=0)
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("in_channels", [1, 3, 5])
@pytest.mark.parametrize("options", [{}, {"padding": 2, "stride": 2}, {"padding": 1, "padding_mode": "circular"}])
def test_conv1d_as_a_2d_convolution_of_height_one_with_the_values_and_gradients_of_torch(in_channels, options, dtype):
    torch.manual_seed(0)
    ours = stn.nn.Conv1d(in_channels, 6, 5, **options).to(dtype)
    plain = nn.Conv1d(in_channels, 6, 5, **options).to(dtype)
    plain.load_state_dict(ours.state_dict())
    x = torch.rand(3, in_channels, 17, dtype=dtype, requires_grad=True)
    out, grads = _gradients(ours, x)
    expected_out, expected_grads = _gradients(plain, x)
    assert (type(out.grad_fn).__name__ == "SqueezeBackward1") == (in_channels <= stn.nn.DIRECT_INPUT_GRAD_MAX_CHANNELS)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    torch.testing.assert_close(out, expected_out, **tol)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, **tol)
    fn = lambda x, w, b: stn.nn.conv1d(x, w, b, 2, 1)  # noqa: E731
    args = (x.detach().double().requires_grad_(), ours.weight.detach().double().requires_grad_(),
            ours.bias.detach().double().requires_grad_())
    assert torch.autograd.gradcheck(fn, args) and torch.autograd.gradgradcheck(fn, args)


def test_the_time_series_models_convolutions_are_torchstns():
    model = stn.create_model("st-cnn1d-aff")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert convs and all(type(m) is stn.nn.Conv1d for m in convs)


def test_torch_fx_traces_the_convolutions_as_it_traces_torch_s():
    """``torch.fx.symbolic_trace`` (feature extraction, FX quantization) of a network built with
    torchstn's Conv2d and Conv1d: the direct-gradient test once asked a Proxy for requires_grad
    (a TraceError, "symbolically traced variables cannot be used as inputs to control flow")."""
    images = nn.Sequential(stn.nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    signals = nn.Sequential(stn.nn.Conv1d(2, 4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28, 3))
    for net, x in ((images, torch.rand(2, 1, 28, 28)), (signals, torch.rand(2, 2, 32))):
        traced = torch.fx.symbolic_trace(net)
        torch.testing.assert_close(traced(x), net(x), atol=0, rtol=0)
        x = x.requires_grad_()
        torch.testing.assert_close(torch.autograd.grad(traced(x).sum(), x)[0], torch.autograd.grad(net(x).sum(), x)[0])
    # a spatial transformer checks its input's shape, which a Proxy does not have: refused, as the README says
    st = stn.SpatialTransformer("affine", stn.conv_localization(1, (28, 28)), output_size=(14, 14))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got torch.fx.proxy.Proxy"):
        torch.fx.symbolic_trace(st)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_torch_jit_script_compiles_torch_s_convolution(padding_mode):
    """Scripting failed ("Variable 'padding' previously had type Tuple[int, int] ..."): the
    classifier of 25 of the 27 registry models could not be scripted. The scripted modules
    give eager's values."""
    from torchstn.models import create_model

    for conv, x in ((stn.nn.Conv2d(1, 4, 3, padding=1, padding_mode=padding_mode), torch.rand(2, 1, 8, 8)),
                    (stn.nn.Conv1d(1, 4, 3, padding=1, padding_mode=padding_mode), torch.rand(2, 1, 20))):
        torch.testing.assert_close(torch.jit.script(conv)(x), conv(x), rtol=0, atol=0)
    classifier = create_model("cnn").classifier
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(torch.jit.script(classifier)(x), classifier(x), rtol=0, atol=0)


def test_a_one_channel_input_takes_the_direct_path_in_nchw_whatever_its_weight_strides(monkeypatch):
    """A one-channel input's convolution in a channels_last model (`to_channels_last` restrides
    its weight, which `is_contiguous()` calls contiguous in both layouts): the direct path is
    handed NCHW strides (its channels_last path was 2.5x slower for 9x9 kernels) and gives the
    gradient of torch's convolution in the input's layout."""
    from torchstn.engine._data import to_channels_last
    from torchstn.nn import _conv

    ours, plain = _pair_of_convs(1, torch.float32, padding=4)
    ours = to_channels_last(ours)
    assert ours.weight.stride(1) == 1 and ours.weight.is_contiguous()  # (restrided, still "contiguous")
    seen = []

    def spy(grad_out, x, weight, *args):
        seen.append((x.stride(), weight.stride()))
        return direct(grad_out, x, weight, *args)

    direct = _conv._DIRECT_BACKWARD
    monkeypatch.setattr(_conv, "_DIRECT_BACKWARD", spy)
    x = torch.rand(3, 1, 11, 10).requires_grad_()
    out, expected_out = ours(x), plain(x)
    grad_out = torch.randn(expected_out.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(out, x, grad_out.contiguous(memory_format=torch.channels_last))
    (expected,) = torch.autograd.grad(expected_out, x, grad_out)
    assert seen == [(x.stride(), (9, 9, 3, 1))]  # (the weight (6, 1, 3, 3) in NCHW strides)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)
