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
    if path.is_dir() and (any(path.glob("*.mace.json")) or any(path.glob("*.model"))):
        return value  # an ensemble: one MACE model file per member
    if not value.endswith((".model", ".mace.json")):
        also = "'registry', " if registry else ""
        names = ", ".join(repr(n) for n in NAMES)
        raise ValueError(f"unknown model {value!r}: use {names}, 'emt', {also}a MACE model "
                         "file (.mace.json, or a trusted .model) or a folder of them "
                         "(an ensemble)")
    if not path.is_file():
        raise ValueError(f"MACE model file {value!r} does not exist")
    if value.endswith(".model"):  # a pickle: found untrusted now, not inside a job
        from xtalloop.models.mace_format import sha256
        from xtalloop.models.trust import how_to_trust, is_trusted

        if not is_trusted(sha256(path)):
            raise ValueError(f"{value} is a pickle not on this machine's trust list; if you "
                             f"trust its source run `{how_to_trust(value)}`")
    return value
