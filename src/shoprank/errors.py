"""Errors that the CLI turns into one-line messages instead of tracebacks."""

from __future__ import annotations


class ShoprankError(Exception):
    """Base class: anything a user can fix by changing their input or settings."""


class ShoprankWarning(UserWarning):
    """Something a user should know but need not stop for; the CLI prints it as one line."""


class DataError(ShoprankError):
    """Bad input data, located by file, line and column so the user can fix it."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<data>"
        if self.line is not None:
            where += f":{self.line}"
        col = f" column '{self.column}':" if self.column else ""
        return f"{where}:{col} {self.message}"


class NotFittedError(ShoprankError, ValueError):
    """A model was used before `fit` (scikit-learn convention)."""
