"""Candidate structure generators behind one protocol."""

from xtalloop.generators.base import Candidate, Generator
from xtalloop.generators.factory import build_generator
from xtalloop.generators.prototype_substitution import PrototypeSubstitutionGenerator
from xtalloop.generators.random_symmetric import RandomSymmetricGenerator

__all__ = [
    "Candidate",
    "Generator",
    "PrototypeSubstitutionGenerator",
    "RandomSymmetricGenerator",
    "build_generator",
]
