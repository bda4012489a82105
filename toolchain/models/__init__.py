"""The model zoo. Importing this package registers every zoo model."""
from toolchain.models.registry import build_from_config, create_model, list_models, register_model  # noqa: F401

# Zoo modules register themselves on import.
from toolchain.models import segnet, pspnet, unet, csrnet, resnet_cifar, vgg_cifar  # noqa: F401,E402
from toolchain.models import mobilenet_seg  # noqa: F401,E402
