"""Metrics against known values and against an independent (scipy) SSIM of the Wang et al. / authors' protocol."""

from __future__ import annotations

import math
import socket

import numpy as np
import PIL.Image
import pytest
import torch
from scipy.signal import convolve2d

from neurop_diff_diffusers.metrics import quality as metrics
from neurop_diff_diffusers.metrics.quality import image_metrics, load_lpips, lpips_availability, psnr, rgb_to_y, ssim


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Direct SSIM (Wang et al. 2004) of two (H, W, C) float arrays on the 8-bit scale, as the authors' code does:
    Gaussian window 11x11 / sigma 1.5 (normalised outer product), valid region only, per channel, channels averaged."""
    half = 5
    g = np.exp(-(np.arange(-half, half + 1) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    window = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for channel in range(x.shape[2]):
        a = x[..., channel].astype(np.float64)
        b = y[..., channel].astype(np.float64)

        def filt(image: np.ndarray) -> np.ndarray:
            return convolve2d(image, window, mode="valid")

        mu_a, mu_b = filt(a), filt(b)
        var_a = filt(a * a) - mu_a**2
        var_b = filt(b * b) - mu_b**2
        cov = filt(a * b) - mu_a * mu_b
        ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        values.append(ssim_map.mean())
    return float(np.mean(values))


def _to_hwc255(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().permute(1, 2, 0).double().numpy()


@pytest.fixture
def sample_pair(samples_dir):
    """A real 256x256 image (repo sample) and a noisy, blurred version of it, in [0, 1]."""
    path = sorted(samples_dir.glob("*.png"))[0]
    hr = torch.from_numpy(np.array(PIL.Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
    noisy = hr + 0.05 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(noisy[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    return blurred.clamp(0, 1)[None], hr[None]


def test_identical_images():
    image = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(psnr(image, image)).all()
    assert torch.allclose(ssim(image, image), torch.ones(2, dtype=torch.float64))
    assert torch.isinf(psnr(image, image, y_channel=True, crop_border=3)).all()
    assert torch.allclose(ssim(image, image, y_channel=True, crop_border=3), torch.ones(2, dtype=torch.float64))


def test_psnr_of_a_fixed_perturbation():
    target = 0.2 + 0.6 * torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    delta = 0.05
    signs = torch.ones_like(target)
    signs[..., ::2, :] = -1  # +-delta: the MSE is delta^2 whatever the signs
    values = psnr(target + delta * signs, target)
    assert values.shape == (2,) and values.dtype == torch.float64
    assert torch.allclose(values, torch.full((2,), -20 * math.log10(delta), dtype=torch.float64), atol=1e-4)


def test_psnr_per_image_and_y_channel():
    target = torch.full((2, 3, 16, 16), 0.5)
    pred = target.clone()
    pred[0] += 0.1
    pred[1] -= 0.01
    assert torch.allclose(psnr(pred, target), torch.tensor([20.0, 40.0], dtype=torch.float64), atol=1e-4)
    # A shift of d on R, G and B shifts Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219 / 255.
    expected = torch.tensor([-20 * math.log10(0.1 * 219 / 255), -20 * math.log10(0.01 * 219 / 255)])
    assert torch.allclose(psnr(pred, target, y_channel=True), expected.double(), atol=1e-4)


def test_crop_border_ignores_the_border():
    target = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    pred = target.clone()
    pred[..., :2, :] = 0
    pred[..., :, -2:] = 1
    assert math.isfinite(psnr(pred, target).item())
    assert math.isinf(psnr(pred, target, crop_border=2).item())


def test_rgb_to_y_known_values():
    rgb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]).t().reshape(1, 3, 1, 3)
    y = rgb_to_y(rgb).flatten() * 255
    assert torch.allclose(y, torch.tensor([16.0, 235.0, 16 + 65.481]), atol=1e-4)


def test_ssim_of_constant_images_is_the_luminance_term():
    # Constant images: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) on the 8-bit scale.
    a, b = 100, 140
    pred = torch.full((1, 3, 24, 24), a / 255)
    target = torch.full((1, 3, 24, 24), b / 255)
    c1 = (0.01 * 255) ** 2
    assert ssim(pred, target).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)


def test_ssim_matches_an_independent_implementation(sample_pair):
    pred, target = sample_pair
    ours = ssim(pred, target).item()
    reference = _reference_ssim(_to_hwc255(pred[0]), _to_hwc255(target[0]))
    assert ours == pytest.approx(reference, abs=1e-9)
    assert 0.3 < ours < 0.99


def test_ssim_matches_reference_on_random_batch_non_square():
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(3, 3, 30, 45, generator=generator)
    pred = (target + 0.2 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    ours = ssim(pred, target)
    assert ours.shape == (3,)
    for i in range(3):
        assert ours[i].item() == pytest.approx(_reference_ssim(_to_hwc255(pred[i]), _to_hwc255(target[i])), abs=1e-9)


def test_ssim_uses_the_valid_region_not_padded_borders(sample_pair):
    # torchmetrics' own mean includes the reflect-padded frame; ours must not (authors' protocol).
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred, target = sample_pair
    p8, t8 = (pred * 255).round().double(), (target * 255).round().double()
    full_mean = structural_similarity_index_measure(p8, t8, data_range=255.0, reduction="none").item()
    ours = ssim(pred, target).item()
    assert ours != pytest.approx(full_mean, abs=1e-6)


def test_ssim_y_channel_matches_reference(sample_pair):
    pred, target = sample_pair
    crop = 4
    ours = ssim(pred, target, y_channel=True, crop_border=crop).item()

    def y255(image: torch.Tensor) -> np.ndarray:
        rgb = _to_hwc255(image)  # 8-bit RGB
        y = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
        return y[crop:-crop, crop:-crop, None]

    assert ours == pytest.approx(_reference_ssim(y255(pred[0]), y255(target[0])), abs=1e-9)


def test_ssim_quantizes_to_8_bits():
    target = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    target = (target * 255).round() / 255
    assert ssim(target + 0.4 / 255, target).item() == 1.0  # within half a level: identical as 8-bit images
    assert ssim(target + 0.4 / 255, target, quantize=False).item() < 1.0


def test_image_metrics_protocols():
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    pred = (target + 0.03).clamp(0, 1)
    rgb = image_metrics(pred, target, scale=4, protocol="rgb")
    y = image_metrics(pred, target, scale=3.2, protocol="y")
    assert rgb["psnr"].item() == psnr(pred, target).item()
    assert y["psnr"].item() == psnr(pred, target, y_channel=True, crop_border=4).item()
    assert y["ssim"].item() == ssim(pred, target, y_channel=True, crop_border=4).item()
    with pytest.raises(ValueError, match="`protocol`"):
        image_metrics(pred, target, protocol="ycbcr")


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17), "same shape"),
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16), r"\(B, C, H, W\)"),
        (torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), "3 channels"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "floating"),
    ],
)
def test_bad_inputs(pred, target, match):
    with pytest.raises(ValueError, match=match):
        psnr(pred, target)
    with pytest.raises(ValueError, match=match):
        ssim(pred, target)


def test_ssim_needs_room_for_the_window():
    image = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match="window"):
        ssim(image, image, crop_border=5)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(image, image, crop_border=10)


def test_lpips_never_touches_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("LPIPS availability must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    available, reason = lpips_availability()
    fn, load_reason = load_lpips()
    assert isinstance(available, bool) and reason
    assert (fn is None) == (not available) and load_reason == reason


def test_lpips_unavailable_reasons(monkeypatch, tmp_path):
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    available, reason = lpips_availability()
    assert not available and "torchvision" in reason
    fn, load_reason = load_lpips()
    assert fn is None and load_reason == reason


def test_lpips_weights_file_follows_torch_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert metrics.lpips_weights_file() == tmp_path / "hub" / "checkpoints" / metrics.LPIPS_ALEXNET_WEIGHTS
