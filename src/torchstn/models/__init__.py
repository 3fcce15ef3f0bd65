"""Paper architectures by name (layer 4): ``create_model``, ``list_models``, ``register_model``.

One module per paper, each builder a plain function registered under its name:

* :mod:`~torchstn.models.stn2015`: Jaderberg et al., *Spatial Transformer Networks*
  (FCN, CNN, ST-FCN, ST-CNN, MNIST addition, the parallel 2x/4xST-CNN);
* :mod:`~torchstn.models.icstn2017`: Lin & Lucey, *Inverse Compositional STN* (IC-STN,
  c-STN and their baselines on perturbed MNIST);
* :mod:`~torchstn.models.pstn2020`: Schwöbel et al., *Probabilistic STN* (P-STN);
* :mod:`~torchstn.models.timeseries`: the P-STN paper's time-series models (1-D CNN, STN
  and P-STN on series ``(B, C, L)``);
* :mod:`~torchstn.models.tutorial`: the PyTorch STN tutorial's network and its CIFAR-10 sibling;
* :mod:`~torchstn.models.volumes`: the STN paper's 3-D model (a 3-D affine transformer, a
  projection along depth, a 2-D CNN) and its baseline, on volumes ``(B, C, D, H, W)``.

Every model is an :class:`STClassifier` (or, for the parallel part models, has its
attributes): ``model.transformers`` lists its spatial transformers (empty for the FCN
and CNN baselines), ``model.transform_input(x)`` is what its classifier sees,
``model.input_shape`` and ``model.num_classes`` what it was built for.

Example:
    >>> from torchstn.models import create_model, list_models
    >>> "st-cnn-tps" in list_models()
    True
    >>> len(create_model("st-cnn-tps").transformers)
    1
"""

from __future__ import annotations

from torchstn.models import icstn2017, pstn2020, stn2015, timeseries, tutorial, volumes  # noqa: F401  (registers the models)
from torchstn.models._base import STClassifier
from torchstn.models._registry import (
    check_model_args,
    create_model,
    forwards_kwargs,
    get_model_builder,
    list_models,
    model_arguments,
    register_model,
)

__all__ = [
    "STClassifier",
    "check_model_args",
    "create_model",
    "forwards_kwargs",
    "get_model_builder",
    "list_models",
    "model_arguments",
    "register_model",
]
