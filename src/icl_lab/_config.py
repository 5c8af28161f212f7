"""The base of every stage's config: a frozen pydantic model that rejects unknown fields, and a
parser that turns pydantic's multi-line report into one line that names the field and the fix."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from icl_lab.errors import ConfigError

C = TypeVar("C", bound="FrozenConfig")


class FrozenConfig(BaseModel):
    """Frozen, strict config; build one from user data with `parse`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def parse(cls: type[C], data: dict[str, Any], where: str = "") -> C:
        """Validate `data`, raising `ConfigError` with a one-line message on failure."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(one_line(e, where or cls.__name__)) from None

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with some fields changed. Nested fields merge at every depth, so
        `cfg.replace(data={"oocr": {"phi": 18}})` changes phi and keeps the rest of `data.oocr`.
        A nested config given whole (an instance, not a dict) replaces the old one."""
        return type(self).parse(_merge(self.model_dump(), changes))


def _merge(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key, value in changes.items():
        if isinstance(value, BaseModel):
            out[key] = value.model_dump()
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def one_line(err: ValidationError, where: str) -> str:
    """Summarise a pydantic error: the first bad field, what is wrong, and how many more there are."""
    first = err.errors()[0]
    loc = ".".join(str(p) if str(p).isprintable() and str(p) else repr(p) for p in first["loc"])  # a key "\n" stays on the line
    msg = first["msg"].removeprefix("Value error, ")
    # a validator that names the field it rejects ("modular.frac: ...", from a nested section)
    # extends the location, so the line reads data.modular.frac as for a declared field
    named = re.fullmatch(r"([A-Za-z_]\w*(?:\.\w+)*): (.*)", msg, re.S) if first["type"] == "value_error" else None
    if named:
        loc, msg = f"{loc}.{named[1]}" if loc else named[1], named[2]
    if first["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    elif first["type"] == "missing":
        msg = "required field is missing; add it"
    got = first.get("input")
    got_text = "" if first["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return " ".join(f"invalid {where}: {loc + ': ' if loc else ''}{msg}{got_text}{more}".splitlines())
