"""Quality measures of generated images against one fixed set of real images: one `Judge`.

* ``Judge(classifier, real, features=...)``: the real set's features phi(real) are computed once; then
  ``judge.fid(fake)``, ``judge.kid(fake, seed)``, ``judge.accuracy(fake, labels)`` or all three at once with
  ``judge.scores(fake, labels, seed)``, for as many generated sets as wanted.
* FID (Heusel et al. 2017): Frechet distance of Gaussians fitted to phi(real) and phi(fake), computed by torchmetrics'
  ``FrechetInceptionDistance`` fed with our features. KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic
  polynomial kernel (torchmetrics' ``poly_mmd``), mean and std over random subsets drawn from a ``torch.Generator``
  seeded with ``seed``: the same subsets as torchmetrics' ``KernelInceptionDistance`` after ``torch.manual_seed(seed)``,
  and the global RNG is never touched.
* Feature spaces phi (``FEATURES``): "classifier", the bundled digit classifier's 128-d penultimate layer (the book's
  FID: Inception cannot run offline); "logits", its 10 logits (what a digit is, not how it is drawn); "pixels", grey
  pixels average-pooled to 8 x 8 (64 features, no learned weights); "inception", torchmetrics' Inception-v3 with 2048
  features (the paper's FID; online only: torch-fidelity and a weights download); or any module mapping images to
  (N, d) features with a ``num_features`` attribute.
* ``class_accuracy``: the fraction of generated digits the classifier reads as the requested class.
* ``real_floor``: the same distances between two real sets (training part vs held-out part, sizes as compared):
  the value a perfect generator would get, printed beside every FID.
* ``fid``, ``kid``, ``distances``: one-line uses of a `Judge`, for one comparison.

Images are float tensors (N, C, H, W) in [-1, 1] (uint8 0..255 is accepted too); the digit features expect
(N, 1, 32, 32) (RGB is averaged to grey). The real set lies on the classifier's device; generated sets are moved there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import data

FEATURES = ("classifier", "logits", "pixels", "inception")
KID_FEATURE_SCALE = 0.1  # our features have E[phi^2] ~ 30; x 0.1 makes x.y/d ~ 0.3 in the cubic kernel, as with Inception


def _grey(imgs: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """x in [-1, 1] float, from uint8 0..255 or float [-1, 1] images with 1 or 3 channels; grey (1 channel) unless
    the reader takes `channels` = 3 (a colour classifier)."""
    x = imgs.float() / 127.5 - 1.0 if imgs.dtype == torch.uint8 else imgs.float()
    return x.mean(dim=1, keepdim=True) if x.shape[1] == 3 and channels == 1 else x  # grey images given as RGB


def _channels(classifier: nn.Module) -> int:
    """The input channels a classifier reads (its config's, 1 for the digit classifiers)."""
    return int(getattr(classifier, "config", {}).get("in_channels", 1))


class ClassifierFeatures(nn.Module):
    """phi(x): the classifier's penultimate features (x `scale`), preprocessing its input itself."""

    def __init__(self, classifier: nn.Module, scale: float = 1.0):
        super().__init__()
        self.classifier = classifier.eval()
        self.scale = scale  # features are multiplied by it
        # read by torchmetrics instead of a dummy pass; a judge other than the classifier names its own
        self.num_features = int(getattr(classifier, "num_features", None) or classifier.head.in_features)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """phi(x): uint8 0..255 or float [-1, 1], 1 or 3 channels -> (N, num_features)."""
        return self.classifier.features(_grey(imgs, _channels(self.classifier))) * self.scale


class LogitFeatures(nn.Module):
    """phi(x): the classifier's class logits (N, classes): what a digit is, not how it is drawn."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = int(classifier.head.out_features)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """phi(x) = logits of p(c | x): uint8 or float [-1, 1], 1 or 3 channels -> (N, classes)."""
        return self.classifier(_grey(imgs, _channels(self.classifier)))


class PixelFeatures(nn.Module):
    """phi(x): grey pixels average-pooled to 8 x 8 (64 features; 4 x 4 blocks of a 32 x 32 digit), no weights."""

    num_features = 64

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """phi(x) = 8 x 8 block means of the grey image -> (N, 64)."""
        return F.adaptive_avg_pool2d(_grey(imgs), 8).flatten(1)


class InceptionFeatures(nn.Module):
    """phi(x): torchmetrics' Inception-v3 pool features (2048), the paper's FID space; images in [-1, 1], any size."""

    num_features = 2048

    def __init__(self):
        super().__init__()
        try:  # torchmetrics builds torch-fidelity's Inception and downloads its weights (once) from GitHub
            from torchmetrics.image.fid import FrechetInceptionDistance

            self.net = FrechetInceptionDistance(feature=2048).inception
        except (ImportError, OSError, RuntimeError, ValueError) as err:
            raise RuntimeError(
                "features='inception' (torchmetrics' Inception-v3, 2048 features, the paper's FID) needs the package "
                "torch-fidelity (pip install torch-fidelity) and the internet the first time, to download its "
                "weights; it cannot run offline. Offline, judge digits with features='classifier' (the bundled "
                f"classifier) or any images with features='pixels'. ({type(err).__name__}: {err})") from err

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """phi(x): Inception-v3 pool3 features of x quantised to 0..255 (torchmetrics' normalize=True) -> (N, 2048)."""
        x = imgs if imgs.dtype == torch.uint8 else ((imgs.float().clamp(-1, 1) + 1) / 2 * 255).byte()  # as normalize=True
        return self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


class _Given(nn.Module):
    """Identity "extractor": torchmetrics' FID is fed features the judge has computed already."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        """The features as given."""
        return phi


def feature_space(features, classifier: nn.Module | None = None) -> tuple[nn.Module, float]:
    """(phi, KID scale) of a feature space named in FEATURES, or of a module of your own (scaled as ours for KID)."""
    if isinstance(features, str):
        if features not in FEATURES:
            raise ValueError(f"unknown feature space {features!r}; choose one of {', '.join(FEATURES)}, or pass a "
                             "module mapping images to (N, d) features with a num_features attribute")
        if features in ("classifier", "logits") and classifier is None:
            raise ValueError(f"features={features!r} reads images through the classifier: pass it "
                             "(models.load('mnist-classifier')), or use features='pixels' or 'inception'")
        if features == "inception":
            return InceptionFeatures(), 1.0  # torchmetrics' own Inception KID: features unscaled
        phi = {"classifier": lambda: ClassifierFeatures(classifier), "logits": lambda: LogitFeatures(classifier),
               "pixels": PixelFeatures}[features]()
        return phi, KID_FEATURE_SCALE
    if not hasattr(features, "num_features"):
        raise ValueError("a feature module needs a num_features attribute (the d of its (N, d) output)")
    return features, KID_FEATURE_SCALE


class Judge:
    """FID, KID and class accuracy of generated sets against one real set, in one feature space phi; phi(real) is
    computed once. FID and KID are torchmetrics' computations on phi (KID on KID_FEATURE_SCALE * phi for our spaces).

    classifier: the bundled digit classifier (models.load("mnist-classifier")): the "classifier" and "logits" feature
    spaces and `accuracy` read through it; None for "pixels" or "inception" (no accuracy then).
    real: the real images (N, C, H, W); features: a name in FEATURES or a module (see `feature_space`);
    kid_subsets, kid_subset_size: KID's subsets (their size at most both set sizes); batch: images per feature pass.
    """

    def __init__(self, classifier: nn.Module | None, real: torch.Tensor, features="classifier", kid_subsets: int = 50,
                 kid_subset_size: int = 500, batch: int = 500):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if len(real) < 2:
            raise ValueError(f"a judge needs at least 2 real images (FID fits a covariance), got {len(real)}")
        self.classifier = classifier.eval() if classifier is not None else None
        self.real, self.features = real, features
        self.kid_subsets, self.kid_subset_size, self.batch = kid_subsets, kid_subset_size, batch
        self.phi, self.kid_scale = feature_space(features, classifier)
        self.phi = self.phi.to(real.device)
        # fid and kid measure the sets they are given, in this process: sync_on_compute=False stops torchmetrics from
        # gathering state from every process of a torch.distributed job at compute(), which hangs when only rank 0 does
        self._fid = FrechetInceptionDistance(feature=_Given(int(self.phi.num_features)), reset_real_features=False,
                                             sync_on_compute=False).to(real.device)
        self.real_features = self.embed(real)  # phi(real), batch by batch: computed once
        for phi_b in self.real_features:
            self._fid.update(phi_b, real=True)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """phi(x) of images, one (b, d) tensor per batch of `batch` images (on the real set's device)."""
        images = images.to(self.real.device)
        return [self.phi(images[i : i + self.batch]) for i in range(0, len(images), self.batch)]

    def _fid_of(self, fake_features: list[torch.Tensor]) -> float:
        """FID ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of the given fake features (Heusel et al. 2017)."""
        self._fid.reset()  # drops the generated features only
        for phi_b in fake_features:
            self._fid.update(phi_b, real=False)
        return float(self._fid.compute())

    def _kid_of(self, fake_features: list[torch.Tensor], seed: int) -> dict[str, float]:
        """KID: unbiased MMD^2, cubic kernel, mean and std over subsets drawn with `seed` (Binkowski et al. 2018)."""
        from torchmetrics.image.kid import poly_mmd

        real, fake = torch.cat(self.real_features) * self.kid_scale, torch.cat(fake_features) * self.kid_scale
        size = min(self.kid_subset_size, len(real), len(fake))
        if size < 2:
            raise ValueError(f"KID compares subsets of at least 2 images of each set; got {len(fake)} generated images")
        g = torch.Generator().manual_seed(seed)  # the draws of KernelInceptionDistance.compute after manual_seed(seed)
        mmd = []
        for _ in range(self.kid_subsets):
            r = real[torch.randperm(len(real), generator=g)[:size].to(real.device)]
            f = fake[torch.randperm(len(fake), generator=g)[:size].to(fake.device)]
            mmd.append(poly_mmd(r, f, degree=3, gamma=None, coef=1.0))
        mmd = torch.stack(mmd)
        return {"kid": float(mmd.mean()), "kid_std": float(mmd.std(unbiased=False))}

    def fid(self, fake: torch.Tensor) -> float:
        """FID of `fake` against the real set (Heusel et al. 2017); phi(real) is reused."""
        return self._fid_of(self.embed(fake))

    def kid(self, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
        """KID of `fake` against the real set, subsets drawn with `seed` (Binkowski et al. 2018): {"kid", "kid_std"}."""
        return self._kid_of(self.embed(fake), seed)

    def accuracy(self, fake: torch.Tensor, labels) -> float:
        """Fraction of `fake` that the classifier reads as `labels` (`class_accuracy`)."""
        if self.classifier is None:
            raise ValueError("accuracy reads the images through the digit classifier: build the judge with one")
        device = self.real.device
        return class_accuracy(self.classifier, fake.to(device), torch.as_tensor(labels, device=device))

    def scores(self, fake: torch.Tensor, labels=None, seed: int = 0) -> dict[str, float]:
        """{"fid", "kid", "kid_std"} of `fake` (phi(fake) computed once), and "accuracy" when `labels` are given."""
        phi = self.embed(fake)
        out = {"fid": self._fid_of(phi), **self._kid_of(phi, seed)}
        if labels is not None:
            out["accuracy"] = self.accuracy(fake, labels)
        return out


@torch.no_grad()
def predict(classifier: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted class argmax_c p(c | x) of each image, (N,)."""
    classifier.eval()
    return torch.cat([classifier(images[i : i + batch].float()).argmax(1) for i in range(0, len(images), batch)])


def class_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose predicted class equals the requested label."""
    return float((predict(classifier, images) == labels).float().mean())


def fid(classifier: nn.Module, real: torch.Tensor, fake: torch.Tensor, features="classifier") -> float:
    """Frechet distance of one generated set to `real` (Heusel et al. 2017): `Judge(...).fid`."""
    return Judge(classifier, real, features).fid(fake)


def kid(classifier: nn.Module, real: torch.Tensor, fake: torch.Tensor, subsets: int = 50,
        subset_size: int = 500, seed: int = 0, features="classifier") -> tuple[float, float]:
    """Kernel distance of one generated set to `real`, (mean, std) over subsets (Binkowski et al. 2018): `Judge(...).kid`."""
    k = Judge(classifier, real, features, kid_subsets=subsets, kid_subset_size=subset_size).kid(fake, seed)
    return k["kid"], k["kid_std"]


def distances(classifier: nn.Module, real: torch.Tensor, fakes: dict, seed: int = 0, subsets: int = 50,
              subset_size: int = 500) -> dict:
    """FID and KID of many generated sets against one real set (one `Judge`): {key: {"fid", "kid", "kid_std"}}."""
    judge = Judge(classifier, real, kid_subsets=subsets, kid_subset_size=subset_size)
    return {key: judge.scores(fake, seed=seed) for key, fake in fakes.items()}


def real_floor(classifier: nn.Module, n: int = 1000, seed: int = 0, n_real: int | None = None,
               balanced: bool = False, dataset: str = "mnist") -> dict[str, float]:
    """Real-vs-real floor: FID/KID of n training images (seeded draw) vs n_real held-out images (default n) of
    `dataset` (`data.split`: "mnist" for mnist-classifier, "emoji" for emoji-classifier; the registry's judges name
    theirs in `ModelInfo.data`).

    Give n_real the size of the reference set that the generated images were compared with (all 1,000 held-out
    digits in the sweep): FID's small-sample bias depends on both set sizes, so the floor must match both.
    balanced=True draws n / classes training images of each class, as generated sets whose sample i asks for class
    i % classes hold them; a random draw of a few dozen images is unbalanced, which puts its "floor" above such
    sets."""
    n_real = n if n_real is None else n_real
    device = next(classifier.parameters()).device  # the images go where the classifier is
    (x_train, y_train), x_held = data.split(dataset, "train"), data.split(dataset, "heldout")[0].to(device)
    if not (2 <= n <= len(x_train) and 2 <= n_real <= len(x_held)):
        raise ValueError(f"real_floor compares n = {n} of the {len(x_train)} training images of {dataset} with "
                         f"n_real = {n_real} of its {len(x_held)} held-out images; pick sizes within those (at least 2)")
    classes = int(y_train.max()) + 1
    if balanced and n % classes:
        raise ValueError(f"a balanced floor draws n / {classes} images of each class of {dataset}; n = {n} is not a "
                         f"multiple of {classes}")
    g = torch.Generator().manual_seed(seed)
    if balanced:
        pick = torch.cat([torch.nonzero(y_train == c).flatten()[torch.randperm(int((y_train == c).sum()), generator=g)
                                                                [: n // classes]] for c in range(classes)])
    else:
        pick = torch.randperm(len(x_train), generator=g)[:n]
    a = x_train[pick].to(device)
    b = x_held[torch.randperm(len(x_held), generator=g)[:n_real].to(device)]
    s = Judge(classifier, b).scores(a, seed=seed)
    return {"fid": s["fid"], "kid": s["kid"], "kid_std": s["kid_std"], "n": n, "n_real": n_real,
            **({"balanced": True} if balanced else {})}
