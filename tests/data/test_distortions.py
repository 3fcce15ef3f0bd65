"""The distorted-MNIST recipes: ground truth reproduces each sample, laws, whole digits, determinism."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

import torchstn as stn
from torchstn.data import KINDS, DistortedMNIST, MNISTDataset, distorted_mnist, get_recipe


N = 48  # samples per kind: enough for the properties, small enough to be fast
SINGLE = ("r", "rts", "p", "e", "perturbed", "rotated")  # one digit, one transform family


@pytest.fixture(scope="module")
def generated(mnist_dir):
    """``kind -> DistortedMNIST`` of the first N test samples (made once per module)."""
    made: dict[str, DistortedMNIST] = {}

    def get(kind: str) -> DistortedMNIST:
        if kind not in made:
            made[kind] = distorted_mnist(kind, "test", mnist_dir, seed=0, limit=N, cache=False)
        return made[kind]

    return get


def _rewarp(data: DistortedMNIST, size: tuple[int, int] | None = None, params: torch.Tensor | None = None,
            transform: stn.Transform | None = None) -> torch.Tensor:
    """Warp the originals with the stored ground truth: float (N, 1, H, W)."""
    x = data.originals().unsqueeze(1).float() / 255
    size = size or tuple(data.images.shape[2:])
    return stn.warp(x, data.params if params is None else params, transform or data.transform, size=size,
                    mode=data.recipe.options.get("mode", "bilinear")).clamp(0, 1)  # (bicubic over- and undershoots)


def test_the_record_is_a_map_style_dataset(generated):
    """``d[i]`` and a DataLoader over the record give what MNISTDataset gives for the same
    images: ``(float32 (C, H, W) in [0, 1], int label)``, batched whole."""
    data = generated("rts")
    image, label = data[5]
    assert image.dtype == torch.float32 and type(label) is int and label == int(data.labels[5])
    assert torch.equal(image * 255, data.images[5].float())
    same = MNISTDataset(data.images, data.labels)
    for ours, theirs in zip(DataLoader(data, batch_size=20), DataLoader(same, batch_size=20)):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert sum(len(batch[1]) for batch in DataLoader(data, batch_size=20)) == N


@pytest.mark.parametrize("kind", list(KINDS))
def test_count_labels_shapes(generated, kind):
    data = generated(kind)
    assert len(data) == N and data.images.dtype == torch.uint8
    assert data.images.shape[1:] == data.recipe.input_shape
    assert data.labels.dtype == torch.int64 and data.labels.shape == (N,)
    source_labels = data.sources.labels[data.source]
    expected = source_labels.sum(1) if kind == "addition" else source_labels
    assert torch.equal(data.labels, expected)
    if kind != "addition":
        assert torch.equal(data.source, torch.arange(N))  # sample i shows digit i of the split
    assert data.params.shape[0] == N and torch.isfinite(data.params).all()
    assert (data.images.flatten(1).amax(1) > 100).all()  # no empty canvas


@pytest.mark.parametrize("kind", SINGLE + ("cluttered",))
def test_stored_parameters_reproduce_the_sample(generated, kind):
    data = generated(kind)
    layer = _rewarp(data).mul(255)
    if kind == "cluttered":
        # the digit layer is under the clutter (pasted with max): equal wherever no patch covers it
        covered = torch.zeros_like(data.images, dtype=torch.bool)
        for i in range(N):
            for (r, c) in data.extras["clutter_at"][i].tolist():
                covered[i, 0, r : r + 6, c : c + 6] = True
        diff = (layer - data.images.float()).abs()[~covered]
        assert diff.max() <= 0.5 + 1e-3
        assert (data.images.float() >= layer.round() - 1e-3).all()
    else:
        assert (layer - data.images.float()).abs().max() <= 0.5 + 1e-3  # the uint8 rounding only
    # and the parameters are not the identity: the samples really are distorted
    identity = data.transform.identity(N) * data.recipe.k  # the digit at its natural size, centred
    assert (data.params - identity).abs().amax(1).min() > 1e-3


def test_addition_channels_reproduce_and_labels_are_sums(generated):
    data = generated("addition")
    assert data.transform is None and data.params.shape == (N, 8) and data.source.shape == (N, 2)
    assert data.recipe.num_classes == 19
    assert int(data.labels.min()) >= 0 and int(data.labels.max()) <= 18
    assert (data.source[:, 0] != data.source[:, 1]).all()
    for c in range(2):
        x = data.originals()[:, c].unsqueeze(1).float() / 255
        y = stn.warp(x, data.params[:, 4 * c : 4 * c + 4], stn.Similarity(), size=(42, 42))
        assert (y.mul(255) - data.images[:, c : c + 1].float()).abs().max() <= 0.5 + 1e-3


def test_cluttered_has_exactly_six_patches_of_other_digits(generated):
    data = generated("cluttered")
    assert data.images.shape[1:] == (1, 60, 60)
    assert data.extras["clutter_source"].shape == (N, 6)
    assert data.extras["clutter_crop"].shape == (N, 6, 2) and data.extras["clutter_at"].shape == (N, 6, 2)
    assert (data.extras["clutter_source"] != torch.arange(N)[:, None]).all()
    # recompose every sample from its digit layer and its six patches: exactly the image
    digit = _rewarp(data).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    for i in range(N):
        canvas = digit[i, 0].clone()
        for src, (sr, sc), (r, c) in zip(
            data.extras["clutter_source"][i].tolist(),
            data.extras["clutter_crop"][i].tolist(),
            data.extras["clutter_at"][i].tolist(),
        ):
            patch = data.sources.images[src, sr : sr + 6, sc : sc + 6]
            canvas[r : r + 6, c : c + 6] = torch.maximum(canvas[r : r + 6, c : c + 6], patch)
        assert torch.equal(canvas, data.images[i, 0])
    # the digit is pasted whole at an integer offset: an exact copy of the original
    s, tx, ty = data.params.double().unbind(1)
    assert torch.allclose(s, torch.full_like(s, 60 / 28))
    cols = ((-tx / s + 1) * 30 - 14).round().long()
    rows = ((-ty / s + 1) * 30 - 14).round().long()
    assert ((rows >= 0) & (rows <= 32) & (cols >= 0) & (cols <= 32)).all()


def test_angle_and_scale_ranges(generated):
    for kind, limit in (("r", 90.0), ("rotated", 180.0), ("rts", 45.0)):
        params = generated(kind).params.double()
        angle = params[:, 1].abs().max()
        assert angle <= math.radians(limit) + 1e-6
        assert angle > math.radians(limit) * 0.5  # the range is used, not just its centre
    r = generated("r").params.double()
    assert torch.allclose(r[:, 0], torch.ones(N, dtype=torch.float64)) and (r[:, 2:] == 0).all()
    rts = generated("rts").params.double()
    scale = (42 / 28) / rts[:, 0]
    assert scale.min() >= 0.7 - 1e-6 and scale.max() <= 1.2 + 1e-6
    assert scale.max() - scale.min() > 0.25


def _outside_mass(data: DistortedMNIST, ring: int) -> torch.Tensor:
    """Ink (0..255) that the warp puts beyond the canvas, rendered on a canvas extended by ``ring`` pixels."""
    w = data.images.shape[-1]
    outer = w + 2 * ring
    rho = outer / w
    if isinstance(data.transform, stn.ThinPlateSpline):
        wide = stn.ThinPlateSpline(control=data.transform.control_points / rho)
        big = _rewarp(data, (outer, outer), transform=wide)
    else:
        scale = torch.diag(torch.tensor([rho, rho, 1.0])).expand(len(data), 3, 3)
        params = data.transform.params_from_matrix(data.transform.matrix(data.params) @ scale)
        big = _rewarp(data, (outer, outer), params=params)
        # sanity: the middle of the extended render is the sample itself
        assert (big[..., ring : ring + w, ring : ring + w].mul(255) - data.images.float()).abs().max() <= 0.5 + 1e-3
    big[..., ring : ring + w, ring : ring + w] = 0
    return big.mul(255).flatten(1).amax(1)


@pytest.mark.parametrize("kind", [k for k in SINGLE if k != "perturbed"])  # perturbed: the paper's law, unconditioned
def test_whole_digit_stays_on_the_canvas(generated, kind):
    assert (_outside_mass(generated(kind), ring=10) < 0.5).all()


def test_rts_digits_keep_a_blank_border(generated):
    for kind in ("rts", "addition"):
        images = generated(kind).images
        border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], -1)
        assert border.max() == 0


def test_bicubic_digits_stay_whole_too(mnist_dir):
    """The whole-digit tests dilated the ink by bilinear's one-pixel reach (and the spline's rendered
    its ring bilinear): bicubic samples, which read two pixels away, left ink of up to 3/255 on rts's
    blank ring (83 of 2,000) and past the canvas of r, p and e (27-41 of 1,000)."""
    rts = distorted_mnist("rts", "train", mnist_dir, limit=1000, cache=False, mode="bicubic").images
    ring = torch.cat([rts[..., 0, :], rts[..., -1, :], rts[..., :, 0], rts[..., :, -1]], -1)
    assert ring.max() == 0
    for kind in ("r", "p", "e"):
        data = distorted_mnist(kind, "train", mnist_dir, limit=500, cache=False, mode="bicubic")
        assert (_outside_mass(data, ring=10) < 0.5).all(), kind
    # keyed apart from the sets drawn before, whose caches hold the ink
    assert get_recipe("rts", {"mode": "bicubic"}).describe()["reach"] == 2
    assert "reach" not in get_recipe("rts").describe()


def test_a_spline_that_takes_the_digit_off_the_canvas_is_redrawn(mnist_dir):
    """The spline's test asked a ring around the canvas to be blank: a digit warped wholly beyond it
    passed, leaving the canvas blank (29 of 300 at sigma=100)."""
    data = distorted_mnist("e", "train", mnist_dir, limit=300, cache=False, sigma=100.0)
    assert (data.images.flatten(1).amax(1) > 0).all()


def test_a_digit_that_fits_nowhere_is_cut_with_a_warning(mnist_dir, tmp_path):
    """rts, addition and 3d place a digit among the positions that keep it whole; where there is
    none (a canvas too small for the drawn scale) it is cut by the edge: once silently, now with a
    warning naming how many and what to change, on rendering and on reading the set back."""
    with warnings.catch_warnings():  # the default options fit every digit: no warning
        warnings.simplefilter("error", UserWarning)
        for kind in ("rts", "addition", "3d"):
            distorted_mnist(kind, "test", mnist_dir, limit=4, cache=False)
    cut = r"mnist-rts test \(seed 0\): [\d,]+ of the 10,000 digits drawn fit nowhere on the 28x28 canvas.*than 28"
    for _ in range(2):  # rendered and cached, then read back from the cache
        with pytest.warns(UserWarning, match=cut):
            data = distorted_mnist("rts", "test", mnist_dir, canvas=28, cache_dir=tmp_path)
    border = torch.cat([data.images[..., 0, :], data.images[..., -1, :], data.images[..., :, 0],
                        data.images[..., :, -1]], -1)
    assert data.manifest["stats"]["unfit"] > 0 and (border.flatten(1).amax(1) > 0).sum() > 0  # (they are cut)
    with pytest.warns(UserWarning, match=r"addition .* of the 2,048 digits drawn fit nowhere on the 30x30"):
        distorted_mnist("addition", "test", mnist_dir, limit=4, cache=False, canvas=30)
    volumes = stn.data.get_dataset("mnist-3d", "test", root=mnist_dir, limit=4, size=60)  # (rendered per batch)
    with pytest.warns(UserWarning, match=r"mnist-3d test .* fit nowhere on the 60x60x60 canvas.*a size below 60"):
        volumes.__getitems__([0])
    with warnings.catch_warnings():  # once per set, not per batch
        warnings.simplefilter("error", UserWarning)
        volumes.__getitems__([1])


def test_without_keep_inside_digits_do_leave_the_canvas(mnist_dir):
    # the check above is not vacuous: the unconditioned IC-STN law (the default) does push ink
    # off the canvas, and keep_inside=True keeps it whole
    data = distorted_mnist("perturbed", "test", mnist_dir, limit=N, cache=False)
    assert (_outside_mass(data, ring=10) >= 0.5).sum() > N // 10
    whole = distorted_mnist("perturbed", "test", mnist_dir, limit=N, cache=False, keep_inside=True)
    assert (_outside_mass(whole, ring=10) < 0.5).all()


def test_noise_laws_without_rejection(mnist_dir):
    e = distorted_mnist("e", "test", mnist_dir, limit=256, cache=False, keep_inside=False, sigma=1.5)
    noise_px = (e.params.double() - e.transform.identity(dtype=torch.float64)) * 14  # 2/28 per pixel
    assert abs(noise_px.std().item() - 1.5) < 0.1 and abs(noise_px.mean().item()) < 0.1

    n = 8192
    p = distorted_mnist("perturbed", "test", mnist_dir, limit=n, cache=False, keep_inside=False)
    # in the IC-STN authors' units: [-1, 1] spans the corner pixels' centres (27 of the 28 pixels)
    corners = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64).expand(n, 4, 2) * 27 / 28
    moved = (p.transform.transform_points(p.params.double(), corners) - corners) * 28 / 27
    # corner noise N(0, 0.25) plus a shared translation N(0, 0.25): per coordinate std 0.25 * sqrt(2)
    # (3.7% more in torchstn's units, 0.367, which the law was drawn in until 2026-12-04)
    assert abs(moved.std().item() - 0.25 * math.sqrt(2)) < 0.006
    shared = moved.mean(1)  # the translation plus a quarter of the corner noise
    assert abs(shared.std().item() - math.sqrt(0.25**2 + 0.25**2 / 4)) < 0.01
    # units="edges": the same law in torchstn's units, where [-1, 1] spans the image (the law until 2026-12-04)
    edges = distorted_mnist("perturbed", "test", mnist_dir, limit=n, cache=False, keep_inside=False, units="edges")
    corners = corners * 28 / 27
    moved = edges.transform.transform_points(edges.params.double(), corners) - corners
    assert abs(moved.std().item() - 0.25 * math.sqrt(2)) < 0.006


def test_p_moves_the_corners_in_the_frame_it_is_told(mnist_dir):
    # the sum of two opposite corners' positions is their two N(0, σ) moves (the scale and the
    # corners cancel), so its std is σ √2 in the frame whose corners moved: the digit's points the
    # canvas's corners sample ("source", the default), or the canvas's points the digit's corners
    # land on ("target"); σ = 5 px, 2/28 of a normalised unit per pixel on the 28x28 canvas
    n, sigma = 8192, 5 * 2 / 28
    corners = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64).expand(n, 4, 2)

    def opposite_sums(points):
        return torch.cat([points[:, 0] + points[:, 2], points[:, 1] + points[:, 3]])

    source = distorted_mnist("p", "test", mnist_dir, limit=n, cache=False, keep_inside=False)
    target = distorted_mnist("p", "test", mnist_dir, limit=n, cache=False, keep_inside=False, moved="target")
    t = source.transform
    sampled = t.transform_points(source.params.double(), corners)  # canvas corners -> digit
    landed = t.transform_points(t.inverse(target.params.double()), corners)  # digit corners -> canvas
    assert abs(opposite_sums(sampled).std().item() / (sigma * math.sqrt(2)) - 1) < 0.03
    assert abs(opposite_sums(landed).std().item() / (sigma * math.sqrt(2)) - 1) < 0.03
    # and each law scales by s ~ U(0.75, 1): the canvas's corners sample 1/s of the digit's frame, the
    # digit's corners land on s of the canvas's (the median half-width of the top edge)
    canvas_in_digit = (sampled[:, 1, 0] - sampled[:, 0, 0]).median().item() / 2
    digit_on_canvas = (landed[:, 1, 0] - landed[:, 0, 0]).median().item() / 2
    smallest, largest = 0.75, 1.0
    assert canvas_in_digit > 1 / largest and canvas_in_digit < 1 / smallest
    assert smallest < digit_on_canvas < largest


def test_same_seed_same_bytes_and_first_samples_do_not_depend_on_limit(mnist_dir, generated):
    for kind in ("rts", "e", "cluttered"):
        again = distorted_mnist(kind, "test", mnist_dir, seed=0, limit=N, cache=False)
        assert torch.equal(again.images, generated(kind).images)
        assert torch.equal(again.params, generated(kind).params)
    longer = distorted_mnist("rts", "test", mnist_dir, seed=0, limit=1100, cache=False)  # crosses a draw block
    assert torch.equal(longer.images[:N], generated("rts").images)
    other = distorted_mnist("rts", "test", mnist_dir, seed=1, limit=N, cache=False)
    assert not torch.equal(other.params, generated("rts").params)


def test_splits_never_share_draws(mnist_dir):
    train = distorted_mnist("rts", "train", mnist_dir, seed=0, limit=1100, cache=False)
    test = distorted_mnist("rts", "test", mnist_dir, seed=0, limit=1100, cache=False)
    # angle and scale of a sample come from the draw alone (the digit only limits the position)
    shared = torch.isin(train.params[:, :2].reshape(-1), test.params[:, :2].reshape(-1))
    assert not shared.any()


def test_options_are_checked_and_change_the_output(mnist_dir, generated):
    with pytest.raises(TypeError, match="unknown option"):
        distorted_mnist("r", "test", mnist_dir, limit=2, cache=False, sigma=2.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        distorted_mnist("twirl", "test", mnist_dir, limit=2, cache=False)
    with pytest.raises(ValueError, match="split must be one of"):
        distorted_mnist("r", "validation", mnist_dir, limit=2, cache=False)
    big = distorted_mnist("r", "test", mnist_dir, limit=4, cache=False, canvas=36)
    assert big.images.shape == (4, 1, 36, 36)
    assert (_rewarp(big).mul(255) - big.images.float()).abs().max() <= 0.5 + 1e-3


@pytest.mark.parametrize("kind", ["r", "rts", "p", "e"])
def test_supersampled_rendering_is_the_mean_of_the_sub_pixel_samples(mnist_dir, generated, kind):
    """``supersample=s``: each canvas pixel the mean of s x s bilinear samples of the same map,
    the same draws; ``supersample=1`` is the default rendering, bytes and identity alike."""
    data = generated(kind)
    same = distorted_mnist(kind, "test", mnist_dir, seed=0, limit=N, cache=False, supersample=1)
    assert torch.equal(same.images, data.images) and same.recipe.describe() == data.recipe.describe()
    smooth = distorted_mnist(kind, "test", mnist_dir, seed=0, limit=N, cache=False, supersample=3)
    assert torch.equal(smooth.params, data.params) and smooth.recipe.describe() != data.recipe.describe()
    h, w = data.images.shape[2:]
    expected = torch.nn.functional.avg_pool2d(_rewarp(data, (3 * h, 3 * w)), 3).mul(255)
    assert (expected - smooth.images.float()).abs().max() <= 0.5 + 1e-3  # the uint8 rounding only
    assert not torch.equal(smooth.images, data.images)


def test_supersample_is_refused_where_a_sample_is_not_one_warp(mnist_dir):
    for kind in ("cluttered", "addition"):
        with pytest.raises(TypeError, match="unknown option"):
            distorted_mnist(kind, "test", mnist_dir, limit=2, cache=False, supersample=2)
    with pytest.raises(ValueError):
        distorted_mnist("p", "test", mnist_dir, limit=2, cache=False, supersample=0)


def test_a_set_renders_on_the_cpu_under_another_default_device(mnist_dir):
    """Under torch.set_default_device (or ``with torch.device(...)``) every kind failed: its
    draws and rendering made tensors on the default device beside CPU ones."""
    from torchstn.data import distorted_mnist

    from torchstn.data import get_dataset

    for kind in ("rts", "p", "e", "cluttered", "addition"):
        expected = distorted_mnist(kind, "test", mnist_dir, limit=3, cache=False)
        with torch.device("meta"):
            got = distorted_mnist(kind, "test", mnist_dir, limit=3, cache=False)
        assert torch.equal(got.images, expected.images) and torch.equal(got.params, expected.params), kind
    for name, options in (("mnist-rts", {"online": True}), ("mnist-3d", {}), ("mnist-r", {})):  # (online: per batch)
        expected = get_dataset(name, "test", root=mnist_dir, limit=3, cache=False, **options).__getitems__([0, 2])
        with torch.device("meta"):
            dataset = get_dataset(name, "test", root=mnist_dir, limit=3, cache=False, **options)
            got = dataset.__getitems__([0, 2])
        assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(got, expected)), name


def test_a_cached_set_is_as_readable_as_its_directory(tmp_path):
    """mkdtemp made each set's directory 0700 whatever the umask: another user of a shared
    cache could not read it. It gets its parent's permissions."""
    import numpy as np

    from torchstn.data._generate import _write_cache

    for mode in (0o755, 0o1777):  # (a world-writable shared cache: the set is still its owner's to write)
        parent = tmp_path / f"distorted-{mode:o}"
        parent.mkdir()
        parent.chmod(mode)
        _write_cache(parent / "set", {"images": np.zeros((2, 3), np.uint8)}, {"key": "k"})
        assert (parent / "set").stat().st_mode & 0o7777 == 0o755
