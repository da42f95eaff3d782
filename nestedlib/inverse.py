"""Linear inverse problems y = A x + sigma_y z, solved with DDRM (Kawar et al. 2022) as an outer process.

* `Operator`: A = U diag(s) V^T, kept in float64, with the measurement noise sigma_y; `inpainting` (a mask) and
  `super_resolution` (block averaging) build the two operators of the chapter.
* `DDRM`: Kawar et al.'s eq. 8 as a nestedlib `Transition` q(x_{t'} | x̂_0, x_t, y), in the operator's spectral domain.
* `Consistent`: an x0-sampler whose preview is made consistent with y by DDRM's last step; the chain takes the
  draw itself, as in Kawar et al.'s reference code (`efficient_generalized_steps` steps from the network's x0_t).
* `ddrm` (the baseline: Algorithm 1 with the network's x̂_0) and `nested_ddrm` (Algorithm 2 with DDRM outside).

Images are (B, C, H, W); measurements are (B, m) with m = len(s). DDRM works with the variance-exploding chain
x^VE_t = x_t / sqrt(abar_t), noise level sigma_t = sqrt((1 - abar_t) / abar_t); the transition converts in and out.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .schedules import CLEAN, OUTER_T_END, Schedule, positive_int
from .sampling import Context, Diffusion, Estimate, NetworkMean, X0Sampler
from .transitions import randn


class Operator:
    """y = A x + sigma_y z with A = U diag(s) V^T (U: m x m, s: m, V: n x n orthogonal; float64), Kawar et al. sec. 3."""

    def __init__(self, U: torch.Tensor, s: torch.Tensor, V: torch.Tensor, image_shape: Sequence[int],
                 sigma_y: float = 0.0, name: str = "operator"):
        n = int(torch.tensor(image_shape).prod())
        m = s.shape[0]
        if U.shape != (m, m) or V.shape != (n, n) or m > n:
            raise ValueError(f"an SVD of an m x n operator needs U (m, m), s (m,), V (n, n) with m <= n; got U "
                             f"{tuple(U.shape)}, s {tuple(s.shape)}, V {tuple(V.shape)} for images {tuple(image_shape)}")
        if not isinstance(sigma_y, (int, float)) or sigma_y < 0:
            raise ValueError(f"sigma_y is the standard deviation of the measurement noise: give a number >= 0 "
                             f"(0: noiseless), got {sigma_y!r}")
        self.U, self.s, self.V = U.double(), s.double(), V.double()
        self.image_shape, self.sigma_y, self.name, self.m, self.n = tuple(image_shape), float(sigma_y), name, m, n

    @classmethod
    def from_matrix(cls, A: torch.Tensor, image_shape: Sequence[int], sigma_y: float = 0.0, name: str = "operator"):
        """An operator from its matrix (m x n), by torch.linalg.svd in float64."""
        U, s, Vh = torch.linalg.svd(A.double(), full_matrices=True)
        return cls(U, s, Vh.T, image_shape, sigma_y, name)

    @property
    def matrix(self) -> torch.Tensor:
        """A = U diag(s) V_m^T (m x n), V_m the first m columns of V."""
        return self.U @ torch.diag(self.s) @ self.V[:, : self.m].T

    def to_spectral(self, x: torch.Tensor) -> torch.Tensor:
        """x̄ = V^T x, images (B, ...) -> (B, n) in float64."""
        return x.reshape(x.shape[0], -1).double() @ self.V

    def from_spectral(self, xbar: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """x = V x̄, (B, n) -> images shaped and typed like `like`."""
        return (xbar @ self.V.T).to(like.dtype).reshape(like.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A x = U diag(s) (V^T x)_{:m}, images -> (B, m) in float64."""
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"{self.name} takes images of shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        return (self.to_spectral(x)[:, : self.m] * self.s) @ self.U.T

    def measure(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """y = A x + sigma_y z (Kawar et al. eq. 1), z ~ N(0, I_m) from `generator` (one per sample, or one)."""
        y = self(x)
        if self.sigma_y == 0:
            return y
        return y + self.sigma_y * randn(y.float(), generator).double()

    def spectral_measurement(self, y: torch.Tensor) -> torch.Tensor:
        """ȳ = diag(s)^+ U^T y (Kawar et al. sec. 3.2), (B, m): the measured spectral components of x."""
        return (y.double() @ self.U) * torch.where(self.s > 0, 1.0 / self.s.clamp(min=1e-300), 0.0)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A^+ y = V_m diag(s)^+ U^T y as images in y's floating dtype: the least-norm image that explains y."""
        xbar = torch.zeros(y.shape[0], self.n, dtype=torch.float64)
        xbar[:, : self.m] = self.spectral_measurement(y)
        dtype = y.dtype if y.is_floating_point() else torch.float32
        return (xbar @ self.V.T).to(dtype).reshape(y.shape[0], *self.image_shape)

    def __repr__(self) -> str:
        return f"Operator({self.name}, m={self.m}, n={self.n}, sigma_y={self.sigma_y:g})"


def inpainting(mask: torch.Tensor, sigma_y: float = 0.0, image_shape: Sequence[int] = (1, 32, 32)) -> Operator:
    """Inpainting: A keeps the pixels where `mask` is True (a selection matrix, all singular values 1)."""
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool or mask.numel() != int(torch.tensor(image_shape).prod()):
        raise ValueError(f"the mask must be a bool tensor with one entry per pixel of an image {tuple(image_shape)} "
                         f"(True: observed), got dtype {mask.dtype} and shape {tuple(mask.shape)}")
    keep = mask.flatten().nonzero().flatten()
    A = torch.eye(mask.numel(), dtype=torch.float64)[keep]
    return Operator.from_matrix(A, image_shape, sigma_y, f"inpainting ({len(keep)} of {mask.numel()} pixels)")


def centre_mask(size: int = 32, hole: int = 12) -> torch.Tensor:
    """A (size, size) bool mask, True everywhere except a centred hole x hole square."""
    if not 0 < hole < size:
        raise ValueError(f"the hole must be between 1 and {size - 1} pixels wide, got {hole}")
    mask = torch.ones(size, size, dtype=torch.bool)
    a = (size - hole) // 2
    mask[a : a + hole, a : a + hole] = False
    return mask


def super_resolution(factor: int = 4, size: int = 32, sigma_y: float = 0.0) -> Operator:
    """factor x super-resolution: A averages each factor x factor block (singular values 1 / factor)."""
    what = f"a positive integer that divides the image size {size} (e.g. 2, 4 or 8)"
    factor = positive_int("the scale factor", factor, what)
    if size % factor:
        raise ValueError(f"the scale factor must be {what}, got {factor!r}")
    low = size // factor
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    block = ((rows // factor) * low + cols // factor).flatten()  # the low-resolution pixel each pixel falls in
    A = torch.zeros(low * low, size * size, dtype=torch.float64)
    A[block, torch.arange(size * size)] = 1.0 / factor**2
    return Operator.from_matrix(A, (1, size, size), sigma_y, f"{factor}x super-resolution ({low}x{low})")


class DDRM:
    """DDRM's step q(x_{t'} | x̂_0, x_t, y) in the spectral domain (Kawar et al. 2022, eq. 8), as a Transition.

    With s = 0 everywhere (nothing measured) it is DDIM with sigma_t = eta sqrt(1 - abar_{t'}) (eta = 0: DDIM(0)).
    """

    name = "ddrm"

    def __init__(self, schedule: Schedule, operator: Operator, y: torch.Tensor, eta: float = 0.85, eta_b: float = 1.0):
        for label, v in (("eta", eta), ("eta_b", eta_b)):
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"DDRM's {label} must lie in [0, 1] (Kawar et al. use eta = 0.85, eta_b = 1), got {v!r}")
        if y.ndim != 2 or y.shape[1] != operator.m:
            raise ValueError(f"y must be (batch, {operator.m}) measurements of {operator.name}; got {tuple(y.shape)}")
        self.schedule, self.operator, self.eta, self.eta_b = schedule, operator, float(eta), float(eta_b)
        self.ybar = operator.spectral_measurement(y)  # ȳ
        s = operator.s
        self.ratio = torch.where(s > 0, operator.sigma_y / s.clamp(min=1e-300), torch.inf)  # sigma_y / s_i

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The x_T this step takes: one image of the operator's shape per measurement (`sampling.check_noise`)."""
        return (self.ybar.shape[0], *self.operator.image_shape)

    def _sigma(self, t: int) -> tuple[float, float]:
        """(abar_t, sigma_t = sqrt((1 - abar_t) / abar_t)) of the VE chain, abar = 1 at the clean end."""
        abar = 1.0 if t == CLEAN else self.schedule.abar(t)
        return abar, ((1.0 - abar) / abar) ** 0.5

    def __call__(self, x_t, x0, t: int, t_next: int, generator=None, variance=None) -> torch.Tensor:
        if variance is not None:
            raise ValueError("DDRM's step has its own variance; a learned variance belongs to the inner DDPM process")
        if x0.shape[0] != self.ybar.shape[0]:
            raise ValueError(f"{x0.shape[0]} images for {self.ybar.shape[0]} measurements; give one y per image")
        op, eta, eta_b, m = self.operator, self.eta, self.eta_b, self.operator.m
        abar_t, sig_t = self._sigma(t)
        abar_n, sig_n = self._sigma(t_next)  # the new noise level sigma_{t'}
        xb = op.to_spectral(x0)  # x̄_θ = V^T x̂_0
        xtb = op.to_spectral(x_t) / abar_t**0.5  # x̄_t of the VE chain
        zb = op.to_spectral(randn(x_t, generator)) if sig_n > 0 else torch.zeros_like(xb)  # V^T z ~ N(0, I)
        # s_i = 0 (not measured): x̄_θ + sqrt(1 - eta^2) sigma_{t'} (x̄_t - x̄_θ) / sigma_t + eta sigma_{t'} z
        new = xb + (1 - eta**2) ** 0.5 * sig_n * (xtb - xb) / sig_t + eta * sig_n * zb
        yb, r, xm, zm = self.ybar, self.ratio, xb[:, :m], zb[:, :m]
        # sigma_{t'} < sigma_y / s_i: x̄_θ + sqrt(1 - eta^2) sigma_{t'} (ȳ - x̄_θ) / (sigma_y / s_i) + eta sigma_{t'} z
        below = xm + (1 - eta**2) ** 0.5 * sig_n * (yb - xm) / r + eta * sig_n * zm
        # sigma_{t'} >= sigma_y / s_i: (1 - eta_b) x̄_θ + eta_b ȳ + sqrt(sigma_{t'}^2 - sigma_y^2 / s_i^2 eta_b^2) z
        above = (1 - eta_b) * xm + eta_b * yb + (sig_n**2 - (r * eta_b) ** 2).clamp(min=0) ** 0.5 * zm
        measured = torch.where(r < torch.inf, torch.where(sig_n < r, below, above), new[:, :m])
        new = torch.cat([measured, new[:, m:]], dim=1)
        return op.from_spectral(new * abar_n**0.5, x_t)  # back to the variance-preserving chain: sqrt(abar_{t'}) x^VE

    def project(self, x0: torch.Tensor) -> torch.Tensor:
        """DDRM's step to the clean end (eq. 8 at sigma_{t'} = 0): with sigma_y = 0 and eta_b = 1, A x̂ = y exactly."""
        return self(x0, x0, 0, CLEAN)

    def __repr__(self) -> str:
        return f"DDRM({self.operator.name}, eta={self.eta:g}, eta_b={self.eta_b:g}, sigma_y={self.operator.sigma_y:g})"


class Consistent:
    """An x0-sampler whose preview goes through `DDRM.project`: the preview a user sees is consistent with y.

    The draw handed to the DDRM step is the inner x0-sampler's own, as in DDRM (Kawar et al.'s reference code steps
    from the network's x0_t): with eta_b < 1 the step keeps (1 - eta_b) of x̂_0's measured components, so feeding it
    the projection instead would be another chain.
    """

    def __init__(self, x0_sampler: X0Sampler, ddrm: DDRM):
        self.x0_sampler, self.ddrm = x0_sampler, ddrm

    def nfe(self, t: int, index: int = 0) -> int:
        return self.x0_sampler.nfe(t, index)

    def __call__(self, x: torch.Tensor, t: int, t_next: int, ctx: Context) -> Estimate:
        estimate = self.x0_sampler(x, t, t_next, ctx)
        return estimate._replace(preview=self.ddrm.project(estimate.shown))  # the chain steps from estimate.draw


def ddrm(network, schedule: Schedule, operator: Operator, y: torch.Tensor, steps: int, *, eta: float = 0.85,
         eta_b: float = 1.0) -> Diffusion:
    """DDRM (Kawar et al. 2022): Algorithm 1 with the network's x̂_0 and the DDRM transition; previews projected."""
    q = DDRM(schedule, operator, y, eta, eta_b)
    return Diffusion(Consistent(NetworkMean(network, schedule), q), q, steps)


def nested_ddrm(inner: X0Sampler, operator: Operator, y: torch.Tensor, outer: int, *, eta: float = 0.85,
                eta_b: float = 1.0, schedule: Schedule | None = None) -> Diffusion:
    """Algorithm 2 for inverse problems: an outer DDRM of `outer` steps (the authors' outer grid) whose x̂_0 is a
    whole inner run (any nestedlib sampler, e.g. `vanilla(network, schedule, 20, transition="ddpm")`)."""
    q = DDRM(schedule or inner.schedule, operator, y, eta, eta_b)
    return Diffusion(Consistent(inner, q), q, outer, t_end=OUTER_T_END["linspace"], drop_end=True)
