"""Read a user's YAML file strictly: a key given twice is an error, not "last one wins".

PyYAML's ``safe_load`` keeps the last value of a repeated mapping key
without a word, so a config that sets ``prefilter:`` twice silently loses
the first block. :class:`UniqueKeyLoader` is the safe loader that refuses
it, naming the key and both lines (YAML merge keys, ``<<``, still override
as YAML defines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from xtalloop.errors import ConfigError


class DuplicateKeyError(ConstructorError):
    """A mapping that gives one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` on a repeated key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise DuplicateKeyError(
                    None, None,
                    f"key {key!r} is given twice (lines {first} and {line}); "
                    "YAML would keep only the last: remove one", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """The data of a YAML (or JSON) file, with one-line :class:`ConfigError` problems.

    Raises
    ------
    ConfigError
        ``<path>: not valid YAML (line N)``, or ``<path>: key 'x' is given
        twice (lines 3 and 9)...``.
    """
    try:
        return yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
