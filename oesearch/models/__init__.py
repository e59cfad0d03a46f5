"""Networks phi.  One architecture serves every objective in an experiment."""

from oesearch.models.lenet import LENET_SPECS, LeNet, LeNetSpec, spec_for_size

__all__ = ["LENET_SPECS", "LeNet", "LeNetSpec", "spec_for_size", "build_model"]


def build_model(image_shape: tuple[int, int, int], head: bool) -> LeNet:
    """The network for images of shape (H, W, C)."""
    height, width, channels = image_shape
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}")
    return LeNet(spec_for_size(height), channels, head=head)
