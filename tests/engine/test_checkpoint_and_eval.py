import math
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

import torchstn as stn
from tests._helpers import perturb
from torchstn.engine import (
    CheckpointError,
    TrainConfig,
    collapse_warnings,
    evaluate,
    load_model,
    read_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    theta_diagnostics,
)
from torchstn.engine._checkpoint import capture_rng, restore_rng
from torchstn.engine._diagnostics import MAX_CLASS_SPREAD, MIN_CLASS_SHARE, predicted_classes, warp_log_area
from torchstn.engine._figures import plot_run, warp_outline


def _model_and_config():
    config = TrainConfig(model="st-cnn-tps", model_args={"num_classes": 4, "input_size": [28, 28], "in_channels": 1})
    return stn.create_model(config.model, **config.model_args), config


def test_checkpoint_roundtrip_rebuilds_the_model(tmp_path):
    model, config = _model_and_config()
    with torch.no_grad():
        model.transformers[0].regressor.bias.add_(0.05)
    path = save_checkpoint(tmp_path / "ck.safetensors", model, config, epoch=3, step=42, metrics={"test_error": 0.5})
    tensors, loaded_config, info = read_checkpoint(path)
    assert loaded_config == config and info == {"epoch": 3, "step": 42, "metrics": {"test_error": 0.5}}
    rebuilt, _, _ = load_model(path)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert not rebuilt.training


def test_checkpoints_get_the_mode_of_any_new_file(tmp_path):
    """As config.json's (the umask's): safetensors alone wrote them readable by their owner only."""
    model, config = _model_and_config()
    path = save_checkpoint(tmp_path / "ck.safetensors", model, config, epoch=1, step=1, training_state={"x": 1})
    (tmp_path / "plain").write_text("")
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    assert path.stat().st_mode & 0o777 == expected
    assert (tmp_path / "ck.state.pt").stat().st_mode & 0o777 == expected


def test_a_write_reaches_the_disk_before_its_rename_and_the_rename_before_it_returns(tmp_path, monkeypatch):
    """``atomic_write`` syncs the new file before it renames it over the old one, then the
    directory: without it, a power cut after a save could leave an empty checkpoint under
    the name (ext4 and xfs may commit the rename before the data)."""
    import os

    from torchstn.engine import _checkpoint

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("names the synced files through /proc (Linux)")
    events = []
    fsync, replace = os.fsync, os.replace

    def synced(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def replaced(src, dst):
        events.append(("replace", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", replaced)
    target = tmp_path / "state.json"
    _checkpoint.atomic_write(target, lambda tmp: tmp.write_text("{}"))
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".tmp") and events[1][1] == str(target) and events[2][1] == str(tmp_path)
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    events.clear()  # an epoch's line of the history too, before the trainer saves the epoch's checkpoint
    (tmp_path / "run").mkdir()
    stn.engine.RunDir(tmp_path / "run").append({"epoch": 1})
    assert events == [("fsync", str(tmp_path / "run" / "metrics.jsonl"))]


def test_a_write_syncs_a_handle_windows_can_sync(tmp_path, monkeypatch):
    """Windows' fsync (FlushFileBuffers) refuses a handle not opened for writing: a read-only one
    made every atomic write fail there (emulated: an fsync that refuses read-only descriptors)."""
    import fcntl
    import os

    from torchstn.engine import _checkpoint

    fsync = os.fsync

    def windows_fsync(fd):
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(9, "Bad file descriptor")  # (nor does it sync a directory)
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(9, "Bad file descriptor")
        fsync(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("names the synced files through /proc (Linux)")
    monkeypatch.setattr(os, "fsync", windows_fsync)
    _checkpoint.atomic_write(tmp_path / "config.json", lambda tmp: tmp.write_text("{}"))
    assert (tmp_path / "config.json").read_text() == "{}"


def test_bad_checkpoints_raise_checkpoint_error(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a torchstn checkpoint"):
        load_model(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a .safetensors checkpoint"):
        resolve_checkpoint(tmp_path / "weights.pt")
    model, config = _model_and_config()
    path = save_checkpoint(tmp_path / "ck.safetensors", model, config.replace(model="st-cnn-aff"), epoch=1, step=1)
    with pytest.raises(CheckpointError, match="does not fit model 'st-cnn-aff'"):
        load_model(path)


def test_rng_capture_and_restore():
    state = capture_rng()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    restore_rng(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


class _Fixed(torch.nn.Module):
    """Predicts the class stored in the first pixel."""

    num_classes = 3

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float() * 10


def test_evaluate_counts_errors_per_class():
    # labels 0,0,1,1,2 ; predictions 0,1,1,1,0 -> class 0: 1/2 wrong, class 1: 0/2, class 2: 1/1
    labels = torch.tensor([0, 0, 1, 1, 2])
    x = torch.zeros(5, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([0.0, 1, 1, 1, 0])
    result = evaluate(_Fixed(), TensorDataset(x, labels), batch_size=2)
    assert result["n"] == 5
    assert result["error"] == pytest.approx(2 / 5)
    assert result["per_class_error"] == [0.5, 0.0, 1.0]
    logits = _Fixed()(x)
    assert result["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))
    assert {"ece", "nll"} <= result.keys()  # the calibration metrics of torchstn.engine.metrics
    assert evaluate(_Fixed(), TensorDataset(x[:2], labels[:2]))["per_class_error"] == [0.5, None, None]


class _Confident(torch.nn.Module):
    """Logits whose gaps are the first pixel's value: confidently wrong beyond float32's floor."""

    num_classes = 2

    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0], torch.zeros_like(x[:, 0, 0, 0])], 1)


def test_evaluate_nll_of_confident_mistakes_is_exact():
    """The NLL was taken from float32 probabilities floored at 1.2e-38: an image cost at most 87.3
    (46.17 for these two, whose exact NLL is 115.0, as their loss said)."""
    x = torch.zeros(2, 1, 1, 1)
    x[:, 0, 0, 0] = torch.tensor([150.0, 80.0])  # class 0 by 150 and by 80: both labelled 1
    labels = torch.tensor([1, 1])
    result = evaluate(_Confident(), TensorDataset(x, labels))
    exact = (150 + math.log1p(math.exp(-150)) + 80 + math.log1p(math.exp(-80))) / 2
    assert result["nll"] == pytest.approx(exact, rel=1e-12)
    assert result["loss"] == pytest.approx(exact, rel=1e-6)
    assert evaluate(_Fixed(), TensorDataset(torch.zeros(1, 1, 1, 1), torch.tensor([0])))["nll"] == pytest.approx(
        math.log1p(2 * math.exp(-10)), rel=1e-9)  # (a model's log-probabilities and a confident right answer)


def test_diagnostics_flag_a_zoomed_out_transformer():
    st = _trained_like()
    x = torch.rand(8, 1, 28, 28)
    healthy = theta_diagnostics([st], x)
    assert collapse_warnings(healthy) == []
    with torch.no_grad():
        st.regressor.bias.copy_(torch.tensor([20.0, 0, 0, 0, 20.0, 0]))  # reads a 20x larger frame
    (d,) = theta_diagnostics([st], x)
    assert d["outside"] > 0.9 and d["kept"] < 0.1 and d["distance"] == pytest.approx(19 * 2**0.5, rel=1e-2)
    (warning,) = collapse_warnings([d])
    assert "collapsed" in warning and "outside the input" in warning and "loc_lr_mult" in warning
    with torch.no_grad():
        st.regressor.bias.fill_(float("nan"))
    assert "not finite" in collapse_warnings(theta_diagnostics([st], x))[0]


def _trained_like() -> stn.SpatialTransformer:
    """A transformer whose θ depends on its input, as after training (a fresh one predicts the identity for all)."""
    torch.manual_seed(0)
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (28, 28)))
    with torch.no_grad():
        st.regressor.weight.normal_(0, 0.05)
    return st


def test_diagnostics_flag_a_transformer_whose_localisation_features_died():
    st = _trained_like()
    x = torch.rand(8, 1, 28, 28)
    assert collapse_warnings(theta_diagnostics([st], x)) == []
    hidden = [m for m in st.localization if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        hidden.bias.fill_(-100.0)  # every unit of the last hidden layer at 0 after its ReLU, for every input
    (d,) = theta_diagnostics([st], x)
    assert max(d["std"]) == 0.0 and d["images"] == 8
    (warning,) = collapse_warnings([d])
    assert "ignores its input" in warning and "all 8 images" in warning and "dead" in warning
    assert collapse_warnings(theta_diagnostics([st], x[:1])) == []  # one image: no spread to judge by


def test_warp_log_area_is_the_log_determinant_of_the_warp():
    a = torch.tensor([[1.3, 0.4, 0.1, -0.2, 0.7, 0.3], [0.5, 0.0, 0.0, 0.0, -0.5, 0.0]], dtype=torch.float64)
    expected = torch.linalg.det(a.reshape(2, 2, 3)[:, :, :2]).abs().log()
    assert torch.allclose(warp_log_area(stn.Affine(), a), expected)
    scale2 = torch.tensor([[2.0, 0, 0, 0, 0, 2.0, 0, 0, 0, 0, 2.0, 0]])  # doubles every side of the volume
    assert warp_log_area(stn.Affine3D(), scale2).item() == pytest.approx(3 * math.log(2), rel=1e-5)
    for transform in (stn.ThinPlateSpline(), stn.Projective(), stn.Similarity()):
        assert warp_log_area(transform, transform.identity(batch=3)).abs().max() < 1e-5
    bent = stn.ThinPlateSpline().identity(batch=1) * 0.5  # every control point pulled halfway to the centre
    assert warp_log_area(stn.ThinPlateSpline(), bent).item() == pytest.approx(math.log(0.25), abs=1e-3)


def test_warp_log_area_of_a_homography_is_the_mean_log_determinant():
    """Each Jacobian column was a one-sided difference at a point of its own: 2.3x the exact mean
    for a perspective term of 0.1 (0.0118 against 0.0050). The exact mean of log |det J| over the
    frame for H = [[1, 0, 0], [0, 1, 0], [h, 0, 1]] is the mean over x of -3 log(1 + h x)."""
    xs = torch.linspace(-1, 1, 200001, dtype=torch.float64)
    for h in (0.1, 0.3, 0.5):
        theta = torch.tensor([[1.0, 0, 0, 0, 1, 0, h, 0]], dtype=torch.float64)
        exact = float((-3 * torch.log1p(h * xs)).mean())
        assert warp_log_area(stn.Projective(), theta).item() == pytest.approx(exact, rel=0.02)


def test_outside_counts_points_beyond_the_border_pixels_edges_with_align_corners_too():
    """With align_corners=True, +-1 are the border pixels' centres: a 2% zoom-out read within the
    pixels was counted 14% outside. Each axis has its own edge (x along the width): a 5% stretch
    along x of a 10x100 image reads outside, along y not (and in 1-D and 3-D alike)."""
    x = torch.rand(4, 1, 28, 28)
    for align_corners in (False, True):
        for zoom, outside in ((1.02, False), (1.06, True)):  # (the border pixels' edges: 1 + 1/27 with align_corners)
            st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (28, 28)), align_corners=align_corners,
                                        start=[zoom, 0, 0, 0, zoom, 0])
            assert (theta_diagnostics([st], x)[0]["outside"] > 0) == outside, (align_corners, zoom)
    cases = [  # (transform, input, start θ, outside): an axis of 10 pixels has its edge at 1 + 1/9
        (stn.Affine(), torch.rand(2, 1, 10, 100), [1.05, 0, 0, 0, 1, 0], True),
        (stn.Affine(), torch.rand(2, 1, 10, 100), [1, 0, 0, 0, 1.05, 0], False),
        (stn.Affine1D(), torch.rand(2, 1, 100), [1.05, 0], True),
        (stn.Affine1D(), torch.rand(2, 1, 10), [1.05, 0], False),
        (stn.Affine3D(), torch.rand(2, 1, 4, 10, 100), [1.05, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], True),
        (stn.Affine3D(), torch.rand(2, 1, 4, 10, 100), [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1.2, 0], False),
    ]
    for transform, x, start, outside in cases:  # (a localisation net of one feature; θ is the start)
        st = stn.SpatialTransformer(transform, torch.nn.Flatten(), align_corners=True,
                                    start=start, in_features=x[0].numel())
        assert (theta_diagnostics([st], x)[0]["outside"] > 0) == outside, (transform, x.shape, start)


class _MeanIntensity(torch.nn.Module):
    """A localisation 'net' whose one feature is the image's mean intensity."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None]


def _scale_by_intensity(gain):
    """An affine transformer that zooms out by ``1 + gain * (mean intensity - 0.25)`` on both axes."""
    st = stn.SpatialTransformer(stn.Affine(), _MeanIntensity(), in_features=1)
    with torch.no_grad():
        st.regressor.weight.zero_()
        st.regressor.weight[[0, 4], 0] = gain
        st.regressor.bias.copy_(torch.tensor([1.0 - 0.25 * gain, 0, 0, 0, 1.0 - 0.25 * gain, 0]))
    return st


def test_diagnostics_warn_when_the_warp_encodes_the_class():
    torch.manual_seed(0)
    classes = torch.arange(64) % 4
    brightness = (classes + 1) / 4 + 0.02 * torch.randn(64)  # class c is drawn at intensity (c + 1) / 4
    x = brightness[:, None, None, None].expand(64, 1, 8, 8).contiguous()
    (d,) = theta_diagnostics([_scale_by_intensity(1.6)], x, classes=classes)
    # class 3 is read through a frame 2.2x as wide and high as class 0's: 4.8x the area
    assert d["class_spread"] == pytest.approx(2 * math.log(2.2), rel=0.05) and d["class_share"] > 0.95
    assert sorted(d["class_log_area"]) == ["0", "1", "2", "3"]
    (warning,) = collapse_warnings([d])
    assert "encode the class" in warning and f"differs {math.exp(d['class_spread']):.1f}x" in warning
    areas = [float(a) for a in re.search(r"identity's: 0: (\S+), 1: (\S+), 2: (\S+), 3: ([\d.]+)", warning).groups()]
    assert areas == pytest.approx([1.0, 1.4**2, 1.8**2, 2.2**2], rel=0.05)  # the area read for each class

    # the same dependence with 1.2x the side (1.44x the area) between the extreme classes: the class sets
    # the zoom, but by less than the threshold, as an object whose size depends on its class may
    (mild,) = theta_diagnostics([_scale_by_intensity(0.25)], x, classes=classes)
    assert mild["class_share"] > MIN_CLASS_SHARE and mild["class_spread"] < MAX_CLASS_SPREAD
    assert collapse_warnings([mild]) == []

    # healthy: the zoom varies as much, but with each image's intensity, not with its class
    shuffled = x[torch.randperm(64)]
    (healthy,) = theta_diagnostics([_scale_by_intensity(1.6)], shuffled, classes=classes)
    assert healthy["class_share"] < MIN_CLASS_SHARE and collapse_warnings([healthy]) == []
    assert healthy["log_area"] == pytest.approx(d["log_area"])  # the same warps, differently labelled

    # without the predicted classes there is nothing to compare; a class with too few images is left out
    assert "class_spread" not in theta_diagnostics([_scale_by_intensity(1.6)], x)[0]
    (few,) = theta_diagnostics([_scale_by_intensity(1.6)], x[:20], classes=torch.tensor([0] * 16 + [3] * 4))
    assert list(few["class_log_area"]) == ["0"] and few["class_spread"] == 0.0


def test_predicted_classes_leave_the_model_and_the_random_state_alone():
    class Noisy(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] + torch.rand(len(x), 3) * (1.0 if self.training else 0.0)

    model, x = Noisy().train(), torch.tensor([[[[0.0, 2.0, 1.0]]], [[[5.0, 1.0, 0.0]]]])
    torch.manual_seed(1)
    assert predicted_classes(model, x).tolist() == [1, 0]  # in eval mode: no noise
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3)) and model.training


def test_warp_outline_maps_the_frame_into_the_input():
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (28, 28)))
    half = torch.tensor([0.5, 0, 0, 0, 0.5, 0])  # reads the central half of the input
    border = warp_outline(st, half, (28, 28))[0]
    assert border.min().item() == pytest.approx(6.5) and border.max().item() == pytest.approx(20.5)
    tps = stn.SpatialTransformer(stn.ThinPlateSpline(), stn.conv_localization(1, (28, 28)))
    lines = warp_outline(tps, stn.ThinPlateSpline().identity(), (28, 28), lines=3)
    assert len(lines) == 1 + 2 * 3


@pytest.fixture
def drawn(monkeypatch):
    """The figures saved during a test, in order (``Figure.savefig`` still writes them)."""
    import matplotlib.figure

    figures, save = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k)))
    return figures


def test_plot_run_titles_the_examples_with_the_predictions_it_is_given(tmp_path, drawn):
    """visualize --errors picked a P-STN's errors from one draw of its θ and titled them from another
    (plot_run ran the model again on the chosen images): some were titled as right."""
    data = TensorDataset(torch.rand(6, 1, 28, 28), torch.arange(6) % 4)
    model = stn.create_model("p-stn", input_size=28, num_classes=4)
    plot_run(model, data, tmp_path / "fig.png", examples=[0, 1, 5], predicted=[3, 0, 2], calibration_images=5)
    titles = [ax.get_title() for ax in drawn[0].axes if ax.get_title()]
    assert titles[:3] == ["3 (true 0)", "0 (true 1)", "2 (true 1)"]
    with pytest.raises(ValueError, match="predicted gives 2 labels for the 3 examples shown"):
        plot_run(model, data, tmp_path / "fig2.png", examples=[0, 1, 5], predicted=[3, 0], calibration_images=5)


def test_the_theta_panels_two_series_do_not_lie_on_each_other(tmp_path, drawn):
    """Both axes were scaled to max x 1.7, so flat or proportional curves coincided and the share
    outside (squares, twin axis) hid the distance (circles)."""
    data = TensorDataset(torch.rand(4, 1, 28, 28), torch.arange(4))
    history = [{"epoch": e, "step": 10 * e, "train_loss": 1.0, "test_loss": 1.0, "train_error": 0.5,
                "test_error": 0.5, "theta": [{"distance": 0.536, "outside": 0.2296}]} for e in (1, 2, 3)]
    plot_run(stn.create_model("st-cnn-aff", input_size=28, num_classes=4), data, tmp_path / "fig.png",
             history=history, num=2, calibration_images=4)
    panel = next(ax for ax in drawn[0].axes if ax.get_title() == "transformer diagnostics (test)")
    twin = next(ax for ax in drawn[0].axes if ax.get_ylabel() == "outside the input (%)")
    left = 0.536 / panel.get_ylim()[1]
    right = 22.96 / twin.get_ylim()[1]
    assert abs(left - right) > 0.1, (left, right)


def test_plot_run_explains_what_it_draws(tmp_path, drawn):
    data = TensorDataset(torch.rand(6, 1, 28, 28), torch.arange(6) % 4)
    history = [{"epoch": e, "step": 10 * e, "train_loss": 2.0 / e**3, "test_loss": 2.1 / e**3,
                "train_error": 0.7 / e**3, "test_error": 0.7 / e**3, "theta": [{"distance": 0.3 * e, "outside": 0.05}]}
               for e in (1, 2, 3)]
    plot_run(stn.create_model("p-stn", input_size=28, num_classes=4), data, tmp_path / "fig.png", history=history,
             num=3, calibration_images=5)
    (fig,) = drawn
    key = [text.get_text() for text in fig.legends[0].get_texts()]
    assert key[0] == "grey: outside the input" and "ST: border of what it reads" in key
    assert "border for the mean θ" in key and any(k.startswith("above: predicted class") for k in key)
    axes = {ax.get_title(): ax for ax in fig.axes}
    loss = "loss (negative log-likelihood), log scale"
    assert axes["error (%), log scale"].get_yscale() == "log" == axes[loss].get_yscale()
    assert next(title for title in axes if title.startswith("reliability, first 5 images: ECE"))
    # the diagnostics: distance on the left axis, the share outside on a twin axis of its own, in %
    assert axes["transformer diagnostics (test)"].get_ylabel() == "mean |θ − identity|"
    assert [ax.get_ylabel() for ax in fig.axes].count("outside the input (%)") == 1
    # and no axis label is drawn over another's (the twin axis's label once covered the reliability
    # panel's "accuracy" at the default eight examples)
    for record in history:  # shares outside the input of the demo's run, whose ticks read "12.5"
        record["theta"] = [{"distance": 0.27, "outside": 0.125 - 0.005 * record["epoch"]}]
    plot_run(stn.create_model("st-cnn-aff", input_size=28, num_classes=4), TensorDataset(torch.rand(8, 1, 28, 28),
             torch.arange(8) % 4), tmp_path / "fig8.png", history=history, num=8, calibration_images=5)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(drawn[-1])  # (plot_run closed it)
    canvas.draw()
    labels = [ax.yaxis.label.get_window_extent(canvas.get_renderer()) for ax in drawn[-1].axes if ax.get_ylabel()]
    assert not any(a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1:])


def test_plot_run_shows_two_channels_in_two_colours(tmp_path, drawn):
    """MNIST addition's inputs hold a digit per channel: the first is drawn magenta, the second
    green (a grey mean would not say which digit a transformer shows), and the key says so."""
    x = torch.zeros(2, 2, 42, 42)
    x[:, 0, 5:10, 5:10] = 1.0  # first channel: a square top left
    x[:, 1, 30:35, 30:35] = 0.5  # second: one bottom right
    model = stn.create_model("st-fcn-aff", in_channels=2, input_size=42, num_classes=19, num_transformers=2)
    plot_run(model, TensorDataset(x, torch.tensor([3, 7])), tmp_path / "fig.png", num=2, calibration_images=2)
    (fig,) = drawn
    assert "channel 1 magenta, channel 2 green" in [text.get_text() for text in fig.legends[0].get_texts()]
    rgb = fig.axes[0].get_images()[0].get_array()  # the first input, RGB
    assert rgb.shape == (42, 42, 3)
    assert rgb[7, 7].tolist() == [1.0, 0.0, 1.0] and rgb[32, 32].tolist() == [0.0, 0.5, 0.0]


def test_plot_run_draws_every_kind_of_model(tmp_path):
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6) % 4
    data = TensorDataset(x, y)
    history = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.1 / e, "train_error": 0.5 / e,
                "test_error": 0.6 / e, "theta": [{"distance": 0.1 * e, "outside": 0.0}] * 2} for e in (1, 2)]
    models = {
        "two": stn.create_model("st-fcn-proj", num_classes=4, num_transformers=2),
        "tps": stn.create_model("st-cnn-tps", num_classes=4),
        "plain": stn.create_model("cnn", num_classes=4),
    }
    for name, model in models.items():
        out = plot_run(model, data, tmp_path / f"{name}.png", history=history, num=4, title=name)
        assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 5_000


def test_theta_diagnostics_leave_batch_norm_dropout_modes_and_the_generators_as_they_were():
    """The per-epoch diagnostics ran the localisation nets in training mode on the test batch:
    BatchNorm's running statistics took in test data and dropout drew from the generator, so
    --test-limit changed the trained weights (a helper's 1-D ST-CNN on GunPoint). They run in
    eval mode now, the generators forked, every submodule's own mode put back."""
    from torchstn.engine._diagnostics import theta_diagnostics

    loc = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten())
    st = perturb(stn.SpatialTransformer("affine", loc, in_features=4 * 26 * 26)).train()
    loc[3].eval()  # a submodule in its own mode (a frozen layer), which must stay so
    x = torch.rand(6, 1, 28, 28)
    before = {k: v.clone() for k, v in st.state_dict().items()}
    rng = torch.get_rng_state()
    (first,) = theta_diagnostics([st], x)
    assert all(torch.equal(before[k], v) for k, v in st.state_dict().items())  # running stats, num_batches_tracked
    assert torch.equal(torch.get_rng_state(), rng)
    assert st.training and loc[1].training and not loc[3].training
    with torch.no_grad():
        expected = st.eval().predict_params(x)
    st.train()
    torch.testing.assert_close(torch.tensor(first["mean"]), expected.mean(0))


def test_evaluate_leaves_every_submodule_mode_alone_and_draws_as_plain_code():
    """evaluate restored the root's mode only (a part the user froze in eval mode went back
    to training mode). A P-STN's test-time θ are drawn from the global generator, as any
    torch code draws (two evaluations, two draws); the trainer forks the generators around
    its own per-epoch evaluation (test_train_leaves_the_run_s_draws_to_its_evaluation)."""
    model = stn.create_model("p-stn", num_classes=4, input_size=(28, 28), test_samples=2).train()
    frozen = model.transformers[0].localization.eval()  # (a fine-tuning's frozen part)
    data = TensorDataset(torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 0, 1]))
    first, second = evaluate(model, data, batch_size=4), evaluate(model, data, batch_size=4)
    assert first["loss"] != second["loss"]  # two Monte Carlo draws
    assert model.training and not frozen.training


def test_diagnostics_take_parallel_transformers_as_their_heads():
    """A user's ParallelSpatialTransformers (docs/variants.md: the diagnostics treat its heads
    like any transformer) failed in torch.isfinite with a list of θ."""
    heads = [stn.SpatialTransformer("affine", stn.conv_localization(1, (16, 16))) for _ in range(2)]
    x = torch.rand(4, 1, 16, 16)
    together = theta_diagnostics([stn.ParallelSpatialTransformers(heads)], x)
    assert together == theta_diagnostics(heads, x) and len(together) == 2


def test_a_model_with_tied_parameters_is_checkpointed_and_read_back(tmp_path):
    """safetensors refuses tensors that share memory: a c-STN whose two steps hold one
    localisation net (accepted by its constructor) failed save_checkpoint, and so training
    after its first epoch. Each key is stored; loading them restores the one net."""
    loc = stn.conv_localization(1, (28, 28))
    model = perturb(stn.CascadedSpatialTransformer("affine", [loc, loc], steps=2, share=False))
    config = TrainConfig(model="st-cnn-aff", data="mnist")
    save_checkpoint(tmp_path / "tied.safetensors", model, config, epoch=0, step=0)
    tensors, _, _ = read_checkpoint(tmp_path / "tied.safetensors")
    assert tensors.keys() == model.state_dict().keys()
    loc2 = stn.conv_localization(1, (28, 28))
    fresh = stn.CascadedSpatialTransformer("affine", [loc2, loc2], steps=2, share=False)
    fresh.load_state_dict(tensors)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)
    assert fresh.localization[0].weight is fresh.refiners[0].localization[0].weight  # still one net


def test_evaluate_checks_its_precision_and_batch_size():
    """precision was "fp32" or else bf16 ("float32" evaluated in bf16), and batch_size was
    not checked (-1 gave no logits and evaluate blamed the dataset, 0 range()'s error)."""
    data = TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\], got 'float32'"):
        evaluate(_Fixed(), data, precision="float32")
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size must be >= 1, got {bad}"):
            evaluate(_Fixed(), data, batch_size=bad)


def test_evaluate_and_predict_name_a_model_that_is_not_a_module():
    """evaluate("model", ...) failed with "'str' object has no attribute 'modules'"."""
    from torchstn.engine import predict

    data = TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]))
    for call in (evaluate, predict):
        with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
            call("model", data)  # type: ignore[arg-type]
    assert evaluate(_Fixed(), data)["n"] == 4  # a module is evaluated


def test_evaluation_draws_read_the_saved_state_and_touch_nothing(tmp_path):
    """The evaluation state is read beside a checkpoint without the repair that --resume makes
    (renaming the previous state file over the current one): an `eval` landing while the
    trainer saved put the old state back and left the run unresumable. Inside, the generator
    is the saved one; outside, untouched; without a saved state, seeded."""
    import shutil

    from torchstn.engine import evaluation_draws
    from torchstn.engine._checkpoint import _previous_state_path, state_path
    from torchstn.models import create_model

    config = TrainConfig(model="cnn")
    last = save_checkpoint(tmp_path / "last.safetensors", create_model("cnn"), config, epoch=1, step=10,
                           training_state={"rng": capture_rng()})
    saved = torch.load(state_path(last), weights_only=True)["rng"]["torch"]
    shutil.copy(state_path(last), _previous_state_path(last))  # a save interrupted after its new state:
    newer = torch.load(state_path(last), weights_only=True)
    newer.update(epoch=2, step=20)  # (the new state, not yet its weights)
    torch.save(newer, state_path(last))
    files = {p: p.read_bytes() for p in (state_path(last), _previous_state_path(last))}
    before = torch.get_rng_state()
    with evaluation_draws(last, seed=0):
        assert torch.equal(torch.get_rng_state(), saved)
    assert torch.equal(torch.get_rng_state(), before)
    assert {p: p.read_bytes() for p in files} == files
    with evaluation_draws(tmp_path / "missing.safetensors", seed=3):
        drawn = torch.rand(2)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(2))


def test_the_best_checkpoint_keeps_the_generators_its_evaluation_drew_from(tmp_path):
    """`eval --which best` of a P-STN seeded the generators (only `last` had its state saved) and
    drew other θ than the best epoch's evaluation; a `best` written before its state was kept
    still loads, seeded."""
    from torchstn.engine import RunDir, evaluation_draws
    from torchstn.engine._checkpoint import state_path
    from torchstn.models import create_model

    run, config = RunDir(tmp_path / "run"), TrainConfig(model="cnn")
    torch.manual_seed(5)
    rng = capture_rng()
    run.save(create_model("cnn"), config, epoch=1, step=10, metrics={}, training_state={"rng": rng}, best=True)
    torch.manual_seed(6)  # (the generators move on)
    with evaluation_draws(run.checkpoint("best"), seed=0):
        assert torch.equal(torch.get_rng_state(), rng["torch"])
    state_path(run.checkpoint("best")).unlink()  # an older run's best checkpoint
    load_model(run.path, "best")
    with evaluation_draws(run.checkpoint("best"), seed=3):
        drawn = torch.rand(2)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(2))


def test_an_empty_training_state_file_is_a_checkpoint_error_naming_it(tmp_path):
    """An empty (0-byte) state file beside a checkpoint (a full disk, a copy cut short): torch.load
    raised EOFError('') and the first line of its empty message was taken: IndexError out of
    eval, visualize, --resume and reproduce. It is a CheckpointError naming the file and the
    error's type; the evaluation's generators are then seeded, as for a missing state (or
    taken from the whole state file, where only the previous one is empty)."""
    from torchstn.engine import evaluation_draws
    from torchstn.engine._checkpoint import _previous_state_path, read_training_state, state_path
    from torchstn.models import create_model

    last = save_checkpoint(tmp_path / "last.safetensors", create_model("cnn"), TrainConfig(model="cnn"), epoch=1,
                           step=10, training_state={"rng": capture_rng()})
    saved = torch.load(state_path(last), weights_only=True)["rng"]["torch"]
    for empty in (state_path(last), _previous_state_path(last)):
        whole = state_path(last).read_bytes()
        empty.write_bytes(b"")
        with pytest.raises(CheckpointError, match=rf"cannot read training state {re.escape(str(empty))}: EOFError$"):
            read_training_state(last)
        with evaluation_draws(last, seed=3):
            drawn = torch.get_rng_state()
        torch.manual_seed(3)
        assert torch.equal(drawn, saved if empty.name.endswith(".prev.state.pt") else torch.get_rng_state())
        state_path(last).write_bytes(whole)
    _previous_state_path(last).unlink()
    assert read_training_state(last)["epoch"] == 1  # (the whole pair again)


def _with_metadata(tmp_path, **changes):
    """A torchstn checkpoint of a CNN whose metadata fields are ``changes`` (``None`` drops one)."""
    import json

    from safetensors import safe_open

    from torchstn.models import create_model

    path = save_checkpoint(tmp_path / "ck.safetensors", create_model("cnn"), TrainConfig(model="cnn"), epoch=1, step=2)
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = json.loads(metadata["config"])
    for key, value in changes.items():
        if key in config:  # a config field
            metadata["config"] = json.dumps({**config, key: value})
        elif value is None:
            del metadata[key]
        else:
            metadata[key] = value
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata=metadata)
    return edited


@pytest.mark.parametrize("changes, fragment", [
    ({"epoch": None}, "its metadata has no 'epoch'"),
    ({"config": None}, "its metadata has no 'config'"),
    ({"step": "x"}, "its metadata 'step' does not parse (invalid literal for int()"),
    ({"config": "{"}, "its metadata 'config' does not parse (Expecting property name"),
    ({"metrics": "nope"}, "its metadata 'metrics' does not parse (Expecting value"),
    ({"config": '{"model": "cnn", "colour": "red"}'}, "its metadata 'config' does not parse (unknown config key(s)"),
    ({"config": "[1, 2]"}, "its metadata 'config' does not parse (a JSON object was expected, got list)"),
])
def test_a_checkpoint_with_broken_metadata_is_a_checkpoint_error_naming_it(tmp_path, changes, fragment):
    """read_checkpoint and load_model promise a CheckpointError for a file that is not a readable
    torchstn checkpoint, but metadata without its epoch or config raised KeyError, and a config or
    metrics that is not JSON the JSON parser's error, naming no file (a traceback out of `eval`)."""
    from torchstn.engine._checkpoint import _weights_stamp

    edited = _with_metadata(tmp_path, **changes)
    calls = [read_checkpoint, load_model] + ([_weights_stamp] if {"epoch", "step"} & changes.keys() else [])
    for call in calls:
        with pytest.raises(CheckpointError) as caught:
            call(edited)
        assert str(caught.value).startswith(f"{edited} is not a readable torchstn checkpoint: ")
        assert fragment in str(caught.value)


def test_a_checkpoint_whose_model_arguments_the_builder_does_not_take_is_a_checkpoint_error(tmp_path):
    """model_args holding an argument the builder does not take (a checkpoint of another torchstn
    version) raised create_model's TypeError out of load_model: a traceback out of `torchstn eval`."""
    edited = _with_metadata(tmp_path, model_args={"future_arg": 1})
    assert read_checkpoint(edited)[1].model_args == {"future_arg": 1}  # (the file itself reads)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(edited))} cannot rebuild model 'cnn': model 'cnn' "
                                              r"got unknown argument 'future_arg'; it takes: channels, .* \(a "
                                              "checkpoint of another torchstn version\\?\\)"):
        load_model(edited)


def test_a_checkpoint_that_does_not_fit_its_model_says_which_weights_do_not(tmp_path):
    """load_model of a checkpoint whose config names another model said "... does not fit model
    'cnn': Error(s) in loading state_dict for STClassifier:" and stopped at the colon (the first
    line of torch's message). The keys missing, unexpected and of another size are counted and
    the first few named, on one line."""
    from torchstn.models import create_model

    st, cnn = create_model("st-cnn-aff", num_classes=4), create_model("cnn")
    transformer = [k for k in st.state_dict() if k not in cnn.state_dict()]  # the ST's localisation net
    assert len(transformer) > 3
    named = f"{', '.join(transformer[:3])} and {len(transformer) - 3} more"  # (in the model's order)
    path = save_checkpoint(tmp_path / "st.safetensors", st, TrainConfig(model="cnn"), epoch=1, step=1)
    with pytest.raises(CheckpointError) as caught:
        load_model(path)  # (the config's cnn has 10 classes, the weights 4)
    head = [k for k, v in cnn.state_dict().items() if v.shape != st.state_dict()[k].shape]
    sizes = ", ".join(f"{k} {list(st.state_dict()[k].shape)} vs {list(cnn.state_dict()[k].shape)}" for k in head)
    unexpected = f"{', '.join(sorted(transformer)[:3])} and {len(transformer) - 3} more"  # (sorted: a file's keys)
    assert str(caught.value) == (f"checkpoint {path} does not fit model 'cnn': {len(transformer)} unexpected keys: "
                                 f"{unexpected}; {len(head)} size mismatches (checkpoint vs model): {sizes}")
    assert [k.rsplit(".", 1)[1] for k in head] == ["weight", "bias"]  # (the classifier's last layer)
    path = save_checkpoint(tmp_path / "cnn.safetensors", cnn, TrainConfig(model="st-cnn-aff"), epoch=1, step=1)
    with pytest.raises(CheckpointError, match=rf"does not fit model 'st-cnn-aff': {len(transformer)} missing keys: "
                                              rf"{re.escape(named)}$"):
        load_model(path)
