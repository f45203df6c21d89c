"""xtalloop: active-learning crystal structure prediction on jobflow."""

__version__ = "0.1.0"
