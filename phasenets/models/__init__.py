"""The block-wise model zoo.

``build_model(name, num_classes, ...)`` returns a `BlockwiseNet`; ``list_models()`` names what
is registered; ``register_model(name, ConfigClass)`` adds an architecture. Importing this package
registers every architecture.
"""

# Imported for their registrations.
from phasenets.models import alexnet, inception_v4, lenet, resnet, resnet_cifar, shathenet, vgg  # noqa: F401
from phasenets.models.blockwise import (
    HEAD_KINDS,
    PREDICTIONS,
    BlockShapeError,
    BlockwiseNet,
    ModelConfigError,
    build_aux_head,
    infer_output_shape,
    meta_forward,
)
from phasenets.models.registry import ModelConfig, build_model, list_models, model_options, register_model

__all__ = [
    "HEAD_KINDS",
    "PREDICTIONS",
    "BlockShapeError",
    "BlockwiseNet",
    "ModelConfig",
    "ModelConfigError",
    "build_aux_head",
    "build_model",
    "infer_output_shape",
    "list_models",
    "meta_forward",
    "model_options",
    "register_model",
]
