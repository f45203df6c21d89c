"""Machine-learned energy models behind one small interface."""

from xtalloop.models.energy_model import (
    AseCalculatorModel,
    CHGNetModel,
    EnergyModel,
    Prediction,
    load_energy_model,
)
from xtalloop.models.pretrained import DiepModel, SevenNetModel

__all__ = [
    "AseCalculatorModel",
    "CHGNetModel",
    "DiepModel",
    "EnergyModel",
    "Prediction",
    "SevenNetModel",
    "load_energy_model",
]
