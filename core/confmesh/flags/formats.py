"""What a flags file is, and the problems found reading one.

``FormatProblem`` names the file, the flag and the path of one problem, so a
refused file lists everything wrong with it at once; ``FlagsDocument`` is what
a reader returns: the flags, the flags that did not translate (kept apart so
offline evaluation can answer PARSE_ERROR for them, as flagd does), and the
problems found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from confmesh.errors import InvalidArgument
from confmesh.flags.model import Flag, FlagSet, check_flag_set

FORMATS = ("confmesh", "classic", "flagd", "unleash")


@dataclass(frozen=True)
class FormatProblem:
    source: str
    flag: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"flags.{self.flag}" if self.flag else ""
        if self.path:
            where = f"{where}.{self.path}" if where else self.path
        return f"{self.source}: {where}: {self.message}" if where else f"{self.source}: {self.message}"


@dataclass
class FlagsDocument:
    flags: dict[str, Flag] = field(default_factory=dict)
    # Flags that did not translate, with why: offline evaluation answers PARSE_ERROR for them.
    broken: dict[str, str] = field(default_factory=dict)
    problems: list[FormatProblem] = field(default_factory=list)

    def flag_set(self) -> FlagSet:
        """The flags, checked as a set; InvalidArgument listing every problem when there are any."""
        if self.problems:
            raise refusal(self.problems)
        try:
            check_flag_set(self.flags)
        except ValueError as exc:
            raise InvalidArgument(f"invalid flag set: {exc}", code="invalid_flag") from exc
        return FlagSet.model_construct(flags=self.flags)

    def lenient_set(self) -> FlagSet:
        """The flags that translated, for offline evaluation; cross-flag problems still refuse."""
        kept = dict(self.flags)
        try:
            check_flag_set(kept)
        except ValueError as exc:
            raise InvalidArgument(f"invalid flag set: {exc}", code="invalid_flag") from exc
        return FlagSet.model_construct(flags=kept)


def refusal(problems: list[FormatProblem]) -> InvalidArgument:
    lines = "\n".join(f"  {p}" for p in problems)
    first = problems[0]
    return InvalidArgument(
        f"refused: {len(problems)} problem(s), nothing was written\n{lines}",
        code="invalid_flag",
        field=f"flags.{first.flag}.{first.path}".rstrip(".") if first.flag else first.path,
    )


def validate_flag(definition: Mapping[str, Any], source: str, key: str, doc: FlagsDocument) -> None:
    """Validate one translated flag into `doc`: kept, or recorded as broken with its problems."""
    try:
        flag = Flag.model_validate(definition)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            doc.problems.append(FormatProblem(source, key, path, message))
            messages.append(f"{path}: {message}" if path else message)
        doc.broken[key] = "; ".join(messages)
        return
    doc.flags[key] = flag
