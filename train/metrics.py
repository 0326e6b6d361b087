"""PSNR and SSIM as the SR literature computes them: on the BT.601 studio-range luma
(MATLAB rgb2ycbcr, Y in [16, 235]) of 8-bit images, with `border` pixels cut from each side;
SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 255."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float64 Y in [16, 235] (MATLAB rgb2ycbcr, not rounded)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
    x = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def _crop(a: np.ndarray, border: int) -> np.ndarray:
    return a[border:a.shape[0] - border, border:a.shape[1] - border] if border else a


def psnr(a: np.ndarray, b: np.ndarray, border: int = 0, data_range: float = 255.0) -> float:
    a, b = _crop(np.asarray(a, np.float64), border), _crop(np.asarray(b, np.float64), border)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation, as MATLAB filter2(w, x, 'valid')."""
    x = sliding_window_view(x, len(w), axis=0) @ w
    return sliding_window_view(x, len(w), axis=1) @ w


def ssim(a: np.ndarray, b: np.ndarray, border: int = 0, data_range: float = 255.0) -> float:
    a, b = _crop(np.asarray(a, np.float64), border), _crop(np.asarray(b, np.float64), border)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    w = _gaussian_window()
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    var_a = _filter_valid(a * a, w) - mu_a ** 2
    var_b = _filter_valid(b * b, w) - mu_b ** 2
    cov = _filter_valid(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    return psnr(rgb_to_y(sr), rgb_to_y(hr), border)


def ssim_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    return ssim(rgb_to_y(sr), rgb_to_y(hr), border)


def laplacian(y: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of a plane, (H-2)x(W-2): its interior pixels."""
    y = np.asarray(y, np.float64)
    return y[1:-1, :-2] + y[1:-1, 2:] + y[:-2, 1:-1] + y[2:, 1:-1] - 4 * y[1:-1, 1:-1]


def laplacian_energy(y: np.ndarray, border: int = 0) -> float:
    """Mean squared 4-neighbour Laplacian of a luma plane: how much fine detail it carries."""
    return float(np.mean(laplacian(_crop(y, border)) ** 2))


def hf_ratio_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """High-frequency energy of SR relative to HR on Y: 1 = as much fine detail as the original.

    MSE-trained models blur (well below 1); a GAN should come closer without going past 1,
    which would mean invented noise. A flat HR has no detail to compare with: NaN (the tables
    leave it out of averages and JSON writes null).
    """
    reference = laplacian_energy(rgb_to_y(hr), border)
    if reference <= 1e-12:
        return float("nan")
    return laplacian_energy(rgb_to_y(sr), border) / reference


def mean_of_defined(values) -> float:
    """The mean of the scores that are defined (not NaN: the HF ratio of a flat image); NaN if none is."""
    defined = [float(v) for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def grid_ratio_y(rgb: np.ndarray, period: int, border: int = 0) -> float:
    """Strength, on Y, of a pattern that repeats every `period` pixels: the upsampler's sub-pixel grid.

    A x`period` network computes each of the period x period output phases with its own
    weights; when they disagree the output carries a fixed grid (a GAN fine-tune's classic
    cross-hatch). The Laplacian of Y is averaged over each phase separately and the spread of
    those means is divided by the Laplacian's RMS, so the number is free of the image's
    content and needs no reference. HR photos read about 0.01 (sampling noise); a grid a
    person sees at 1:1 reads 0.2 and up. `period` <= 1 has no phases: 0.
    """
    if period <= 1:
        return 0.0
    lap = laplacian(_crop(rgb_to_y(rgb), border))
    h, w = lap.shape[0] // period * period, lap.shape[1] // period * period
    if h == 0 or w == 0:
        raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} is too small for a period of {period}")
    lap = lap[:h, :w]
    phase_means = lap.reshape(h // period, period, w // period, period).mean(axis=(0, 2))
    rms = float(np.sqrt(np.mean(lap ** 2)))
    return float(phase_means.std() / rms) if rms > 0 else 0.0
