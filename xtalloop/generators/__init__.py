"""Candidate structure generators behind one protocol."""

from xtalloop.generators.base import Candidate, Generator
from xtalloop.generators.random_symmetric import RandomSymmetricGenerator

__all__ = ["Candidate", "Generator", "RandomSymmetricGenerator"]
