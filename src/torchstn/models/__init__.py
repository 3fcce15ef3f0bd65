"""Paper architectures by name (layer 4): ``create_model``, ``list_models``, ``register_model``.

Every model is an :class:`STClassifier`: ``model.transformers`` lists its spatial
transformers (empty for the FCN and CNN baselines), ``model.transform_input(x)`` is what
its classifier sees, ``model.input_shape`` and ``model.num_classes`` what it was built for.

Example:
    >>> from torchstn.models import create_model, list_models
    >>> "st-cnn-tps" in list_models()
    True
    >>> len(create_model("st-cnn-tps").transformers)
    1
"""

from __future__ import annotations

from torchstn.models import _paper, _tutorial, _variants  # noqa: F401  (registers the models)
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
