"""Networks phi.  One architecture serves every objective in an experiment."""

from torch import nn

from oesearch.models.lenet import LENET_SPECS, LeNet, LeNetSpec, spec_for_size
from oesearch.models.setup import BIAS_FREE_METHODS, INITS, REFERENCE, ModelSetup, resolve_setup
from oesearch.models.wideresnet import WideResNet

__all__ = ["LENET_SPECS", "LeNet", "LeNetSpec", "WideResNet", "spec_for_size", "build_model", "ModelSetup",
           "REFERENCE", "INITS", "BIAS_FREE_METHODS", "resolve_setup"]


def build_model(image_shape: tuple[int, int, int], head: bool, setup: ModelSetup = REFERENCE) -> nn.Module:
    """The network for images of shape (H, W, C): a LeNet, or the WideResNet for 224x224."""
    height, width, channels = image_shape
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}")
    if height == 224:
        return WideResNet(channels, head=head, setup=setup)
    return LeNet(spec_for_size(height), channels, head=head, setup=setup)
