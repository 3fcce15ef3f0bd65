"""The model of the P-STN paper: Schwöbel et al., *Probabilistic Spatial Transformer Networks*
(arXiv 2004.03637): ``p-stn``, a distribution over the transformation in front of a CNN."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchstn.models._base import STClassifier, as_size
from torchstn.models._registry import register_model
from torchstn.models.stn2015 import cnn_classifier, st_cnn_localization
from torchstn.nn import Distribution, ProbabilisticSpatialTransformer
from torchstn.sampling import Mode, Padding, SamplerOptions
from torchstn.transforms import Transform

__all__ = ["PSTNClassifier", "p_stn"]


class PSTNClassifier(STClassifier):
    """An :class:`~torchstn.models.STClassifier` around one :class:`~torchstn.nn.ProbabilisticSpatialTransformer`.

    The classifier sees the ``S`` sampled warps of each input, and the output combines them
    (:meth:`~torchstn.nn.ProbabilisticSpatialTransformer.marginalize`, P-STN section 3, as the
    authors' code): in training the mean of their log-probabilities, so that
    ``nll_loss(model(x), y)`` is the ELBO's data term; in evaluation the log of the averaged
    predictive distribution. Add :func:`torchstn.nn.total_kl` for the KL term.
    """

    #: the output is log-probabilities (in training the mean of the samples', not normalised):
    #: the engine's loss is their negative log-likelihood (:func:`torchstn.engine.data_loss`)
    log_probabilities = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(B, num_classes)`` combined over the sampled transformations."""
        return self.transformers[0].marginalize(self.classifier(self.transform_input(self.checked(x))))


@register_model("p-stn")
def p_stn(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    transform: Transform | str = "similarity", distribution: Distribution = "student-t", samples: int = 1,
    test_samples: int = 10, kl_weight: float = 1e-4, prior_alpha: float = 1.0, prior_beta: float = 1.0,
    init_scale: float = 0.08, mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> PSTNClassifier:
    """P-STN for MNIST-sized images (Schwöbel et al., arXiv 2004.03637, sections 3 and 5).

    A :class:`~torchstn.nn.ProbabilisticSpatialTransformer` (Student-t θ with a Gamma
    precision, KL between Gammas; or ``distribution="gaussian"``) in front of the STN
    paper's CNN. The defaults follow the authors' MNIST runs: a 4-parameter similarity
    (rotation, scale, translation), one sample per input in training and 10 at test
    time, prior Gamma(1, 1), ``kl_weight`` 1e-4 (they tune it from 1e-5 to 1e-3 with the
    training set size). The localisation net is the STN paper's ST-CNN one
    (:func:`~torchstn.models.stn2015.st_cnn_localization`) and the classifier the ``cnn``
    baseline's (our choices; the paper's networks differ per experiment).

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        transform, distribution, samples, test_samples, kl_weight, prior_alpha, prior_beta, init_scale: as in
            :class:`~torchstn.nn.ProbabilisticSpatialTransformer`.
        mode, padding, align_corners: sampling options of the warps
            (:class:`~torchstn.sampling.SamplerOptions`).

    Example:
        >>> m = stn.create_model("p-stn", samples=3)
        >>> probs = m.eval()(torch.rand(2, 1, 28, 28)).exp()  # a distribution per input (evaluation)
        >>> torch.allclose(probs.sum(1), torch.ones(2))
        True
        >>> bool(stn.nn.total_kl(m) > 0)
        True
    """
    size = as_size("input_size", input_size)
    pst = ProbabilisticSpatialTransformer(
        transform, st_cnn_localization(in_channels, size), samples=samples, test_samples=test_samples,
        distribution=distribution, kl_weight=kl_weight, prior_alpha=prior_alpha, prior_beta=prior_beta,
        init_scale=init_scale, sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
    )
    return PSTNClassifier(
        cnn_classifier(in_channels, size, num_classes), [pst], input_shape=(in_channels, *size), num_classes=num_classes
    )
