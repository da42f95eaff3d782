"""Quality measures of generated digits, all read through the bundled evaluation classifier.

* ``class_accuracy``: the fraction of generated digits the classifier reads as the requested class.
* ``fid`` / ``kid``: Frechet / kernel distance between feature sets (Heusel et al. 2017; Binkowski et al.
  2018), computed by torchmetrics with the classifier's 128-d penultimate layer in place of Inception
  (``feature=ClassifierFeatures(...)``): Inception cannot run offline here; online GPU users can pass
  ``feature=2048`` to torchmetrics themselves.
* ``real_floor``: the same distance between two real sets (training part vs held-out part, sizes as compared):
  the value a perfect generator would get, printed beside every FID.

Images are float tensors (N, 1, 32, 32) in [-1, 1] (uint8 0..255 is accepted too), on the classifier's device.
"""

from __future__ import annotations

import torch
from torch import nn

from . import data


class ClassifierFeatures(nn.Module):
    """Feature extractor for torchmetrics: preprocesses its input itself, returns penultimate features."""

    def __init__(self, classifier: nn.Module, scale: float = 1.0):
        super().__init__()
        self.classifier = classifier.eval()
        self.scale = scale  # features are multiplied by it
        # read by torchmetrics instead of a dummy pass; a judge other than the classifier names its own
        self.num_features = int(getattr(classifier, "num_features", None) or classifier.head.in_features)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """phi(x): uint8 0..255 or float [-1, 1], 1 or 3 channels -> (N, num_features)."""
        x = imgs.float() / 127.5 - 1.0 if imgs.dtype == torch.uint8 else imgs.float()
        if x.shape[1] == 3:  # grey images given as RGB
            x = x.mean(dim=1, keepdim=True)
        return self.classifier.features(x) * self.scale


@torch.no_grad()
def predict(classifier: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted class argmax_c p(c | x) of each image, (N,)."""
    classifier.eval()
    return torch.cat([classifier(images[i : i + batch].float()).argmax(1) for i in range(0, len(images), batch)])


def class_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose predicted class equals the requested label."""
    return float((predict(classifier, images) == labels).float().mean())


def _feed(metric, real: torch.Tensor, fake: torch.Tensor, batch: int = 500):
    """Feed real and generated images to a torchmetrics distance in batches, on the images' device."""
    metric.to(real.device)
    for i in range(0, len(real), batch):
        metric.update(real[i : i + batch], real=True)
    for i in range(0, len(fake), batch):
        metric.update(fake[i : i + batch], real=False)
    return metric


# fid and kid measure the sets they are given, in this process: sync_on_compute=False stops torchmetrics from
# gathering state from every process of a torch.distributed job at compute(), which hangs when only rank 0 computes.


def fid(classifier: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) in classifier features (Heusel et al. 2017)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), sync_on_compute=False)
    return float(_feed(metric, real, fake).compute())


class Reference:
    """One real set, its features computed once, against which many generated sets are scored: FID and KID (the same
    torchmetrics computations as `fid` and `kid`, with `reset_real_features=False`) and class accuracy."""

    def __init__(self, classifier: nn.Module, real: torch.Tensor, kid_subsets: int = 50, kid_subset_size: int = 500):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.classifier, self.real = classifier, real
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), reset_real_features=False,
                                               sync_on_compute=False)
        _feed(self.metric, real, real[:0])
        self._kid = {}  # one KID metric per subset size, which torchmetrics fixes at construction

    def fid(self, fake: torch.Tensor) -> float:
        """FID of `fake` against the reference set (Heusel et al. 2017); the reference features are reused."""
        self.metric.reset()  # drops the generated features only
        return float(_feed(self.metric, fake[:0], fake).compute())

    def kid(self, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
        """KID of `fake` as `kid` computes it (subsets drawn with `seed`): {"kid", "kid_std"}."""
        from torchmetrics.image.kid import KernelInceptionDistance

        size = min(self.kid_subset_size, len(self.real), len(fake))
        if size not in self._kid:
            self._kid[size] = KernelInceptionDistance(
                feature=ClassifierFeatures(self.classifier, KID_FEATURE_SCALE), subsets=self.kid_subsets,
                subset_size=size, sync_on_compute=False, reset_real_features=False)
            _feed(self._kid[size], self.real, self.real[:0])
        metric = self._kid[size]
        metric.reset()
        _feed(metric, fake[:0], fake)
        state = torch.random.get_rng_state()  # torchmetrics draws its subsets from the global RNG: as in `kid`
        torch.manual_seed(seed)
        try:
            mean, std = metric.compute()
        finally:
            torch.random.set_rng_state(state)
        return {"kid": float(mean), "kid_std": float(std)}

    def accuracy(self, fake: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of `fake` that the classifier reads as `labels` (`class_accuracy`)."""
        return class_accuracy(self.classifier, fake, labels.to(fake.device))


KID_FEATURE_SCALE = 0.1  # our features have E[phi^2] ~ 30; x 0.1 makes x.y/d ~ 0.3 in the cubic kernel, as with Inception


def kid(classifier: nn.Module, real: torch.Tensor, fake: torch.Tensor, subsets: int = 50,
        subset_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """Kernel distance: unbiased MMD^2 with cubic polynomial kernel, mean and std over subsets (Binkowski et al. 2018)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    metric = KernelInceptionDistance(feature=ClassifierFeatures(classifier, KID_FEATURE_SCALE), subsets=subsets,
                                     subset_size=min(subset_size, len(real), len(fake)), sync_on_compute=False)
    _feed(metric, real, fake)
    state = torch.random.get_rng_state()  # torchmetrics draws its subsets from the global RNG:
    torch.manual_seed(seed)  # fix it for this call and restore it afterwards
    try:
        mean, std = metric.compute()
    finally:
        torch.random.set_rng_state(state)
    return float(mean), float(std)


def real_floor(classifier: nn.Module, n: int = 1000, seed: int = 0, n_real: int | None = None,
               balanced: bool = False) -> dict[str, float]:
    """Real-vs-real floor: FID/KID of n training digits (seeded draw) vs n_real held-out digits (default n).

    Give n_real the size of the reference set that the generated digits were compared with (all 1,000 held-out
    digits in the sweep): FID's small-sample bias depends on both set sizes, so the floor must match both.
    balanced=True draws n / 10 training digits of each class, as generated sets whose sample i asks for digit
    i % 10 hold them; a random draw of a few dozen digits is unbalanced, which puts its "floor" above such sets."""
    n_real = n if n_real is None else n_real
    device = next(classifier.parameters()).device  # the digits go where the classifier is
    (x_train, y_train), x_held = data.mnist("train"), data.mnist("heldout")[0].to(device)
    if not (2 <= n <= len(x_train) and 2 <= n_real <= len(x_held)):
        raise ValueError(f"real_floor compares n = {n} of the {len(x_train)} training digits with n_real = {n_real} "
                         f"of the {len(x_held)} held-out digits; pick sizes within those (at least 2)")
    if balanced and n % 10:
        raise ValueError(f"a balanced floor draws n / 10 digits of each class; n = {n} is not a multiple of 10")
    g = torch.Generator().manual_seed(seed)
    if balanced:
        pick = torch.cat([torch.nonzero(y_train == c).flatten()[torch.randperm(int((y_train == c).sum()), generator=g)[: n // 10]]
                          for c in range(10)])
    else:
        pick = torch.randperm(len(x_train), generator=g)[:n]
    a = x_train[pick].to(device)
    b = x_held[torch.randperm(len(x_held), generator=g)[:n_real].to(device)]
    k_mean, k_std = kid(classifier, b, a, seed=seed)
    return {"fid": fid(classifier, b, a), "kid": k_mean, "kid_std": k_std, "n": n, "n_real": n_real,
            **({"balanced": True} if balanced else {})}


def distances(classifier: nn.Module, real: torch.Tensor, fakes: dict, seed: int = 0, subsets: int = 50,
              subset_size: int = 500) -> dict:
    """`fid` and `kid` of many generated sets against one reference set (`Reference`: its features once):
    {key: {"fid", "kid", "kid_std"}}, equal to calling fid and kid per set."""
    ref = Reference(classifier, real, kid_subsets=subsets, kid_subset_size=subset_size)
    return {key: {"fid": ref.fid(fake), **ref.kid(fake, seed)} for key, fake in fakes.items()}
