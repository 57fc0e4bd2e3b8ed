"""A problem found in a config file, and the error that carries them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {prefix}{self.message}"


class ConfigError(Exception):
    """The config is invalid. `problems` holds every error (sorted by position)."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.col))
        self.warnings = sorted(warnings or [], key=lambda p: (p.line, p.col))
        super().__init__("\n".join(str(p) for p in self.problems))
