"""How a network is set up: biases, BatchNorm's affine parameters and the initialisation.

The paper's numbers come from what its reference code (liznerski/eoe) actually
trains, which is not what its model code reads like:

- every CIFAR and F/MNIST script builds ``CNN32(bias=True)`` / ``CNN28(bias=True)``:
  a bias on every convolution and linear layer, and BatchNorm with a trainable
  scale and shift (``affine=bias``);
- the model code writes a Xavier-normal initialisation, but the trainer then calls
  ``reset_parameters()`` on every module (``weight_reset``), so PyTorch's default
  initialisation is what trains.

:data:`REFERENCE` is that effective setup.  Deep SVDD and Deep SAD need a bias-free
network: with a bias (or a BatchNorm shift) phi can map every input onto the centre
c, the hypersphere collapse of Ruff et al. (2018, Section 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from oesearch.config import ModelConfig, field_default
from oesearch.methods import METHODS

__all__ = ["ModelSetup", "INITS", "REFERENCE", "BIAS_FREE_METHODS", "resolve_setup"]

# reference: PyTorch's default, what the reference trainer's weight_reset leaves;
# as_written: what the reference's model code writes (Xavier-normal for the LeNets,
# Kaiming-normal with zeroed spatial-gate BatchNorm for the WideResNet), which its trainer discards.
INITS = ("reference", "as_written")

# Centre-based one-class methods: a bias lets phi collapse onto the centre (Ruff et al. 2018).
BIAS_FREE_METHODS = tuple(name for name, m in METHODS.items() if m.needs_centre)


@dataclass(frozen=True)
class ModelSetup:
    """Biases on convolutions and linear layers, BatchNorm's affine parameters, and the initialisation."""

    bias: bool = True
    batchnorm_affine: bool = True
    init: str = "reference"

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose from {list(INITS)}")


REFERENCE = ModelSetup()  # what the reference code trains: biases, affine BatchNorm, PyTorch's default init


def resolve_setup(method: str, bias: bool | str = field_default(ModelConfig, "bias"),
                  batchnorm_affine: bool | str = field_default(ModelConfig, "batchnorm_affine"),
                  init: str = field_default(ModelConfig, "init")) -> ModelSetup:
    """The setup for ``method``; ``auto`` is the reference's ``True``, except ``False`` for Deep SVDD/SAD."""
    default = method not in BIAS_FREE_METHODS
    return ModelSetup(bias=default if bias == "auto" else bool(bias),
                      batchnorm_affine=default if batchnorm_affine == "auto" else bool(batchnorm_affine),
                      init=init)
