"""The base of every configuration section, and the check of an energy-model setting."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    # errors are shown through config_error_message; hiding the input keeps a
    # password that a uri should not hold out of any other rendering of them
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _check_model_spec(value: str, registry: bool) -> str:
    from xtalloop.errors import XtalloopError
    from xtalloop.models.pretrained import NAMES, canonical_name

    if value == "emt" or (registry and value == "registry"):
        return value
    try:
        if canonical_name(value) is not None:  # chgnet, sevennet[:...], diep
            return value
    except XtalloopError as exc:  # an unknown variant, a package not installed
        raise ValueError(str(exc)) from None
    path = Path(value).expanduser()
    from xtalloop.models.mace_format import PICKLE_SUFFIXES, pickle_refused

    if path.is_dir() and any(path.glob("*.mace.json")):
        return value  # an ensemble: one MACE model file per member
    if value.endswith(".chgnet.json") or (path.is_dir() and any(path.glob("*.chgnet.json"))):
        if not path.exists():  # a fine-tuned CHGNet (xtalloop.learn.chgnet_finetune)
            raise ValueError(f"fine-tuned CHGNet {value!r} does not exist")
        return value
    if value.endswith(PICKLE_SUFFIXES) or (path.is_dir() and any(path.glob("*.model"))):
        raise ValueError(str(pickle_refused(value)))  # found now, not inside a job
    if not value.endswith(".mace.json"):
        also = "'registry', " if registry else ""
        names = ", ".join(repr(n) for n in NAMES)
        raise ValueError(f"unknown model {value!r}: use {names}, 'emt', {also}a MACE model "
                         "file (.mace.json) or a folder of them (an ensemble), or a "
                         "fine-tuned CHGNet (.chgnet.json)")
    if not path.is_file():
        raise ValueError(f"MACE model file {value!r} does not exist")
    return value
