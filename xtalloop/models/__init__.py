"""Machine-learned energy models behind one small interface."""

from xtalloop.models.energy_model import (
    AseCalculatorModel,
    CHGNetModel,
    EnergyModel,
    Prediction,
    load_energy_model,
)

__all__ = [
    "AseCalculatorModel",
    "CHGNetModel",
    "EnergyModel",
    "Prediction",
    "load_energy_model",
]
