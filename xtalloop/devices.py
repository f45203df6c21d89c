"""Torch device and thread settings shared by the training and sampling commands.

Kept apart from the command line so the benchmarks and the library use the same
checks as ``xtalloop generator`` (a ``cuda`` request on a CPU-only machine is one
:class:`~xtalloop.errors.ConfigError` line, not a torch traceback deep in training).
"""

from __future__ import annotations

from xtalloop.errors import ConfigError


def check_device(device: str | None) -> None:
    """Raise :class:`ConfigError` if ``cuda`` is asked for but not available."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for but CUDA is not available here")



def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (``None``: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
