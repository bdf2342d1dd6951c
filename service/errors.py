"""What went wrong with a request, as a kind; each front door (service/api/) picks its HTTP status."""

from __future__ import annotations

from typing import Any, Literal

# malformed: not parsable, or not the protocol's shape; invalid: does not fit the model;
# too_large: over a limit
Kind = Literal["malformed", "invalid", "too_large"]


class InputError(ValueError):
    """A request that cannot be scored; `details` name records and fields."""

    def __init__(self, kind: Kind, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.details = kind, message, details or []

    def to_json(self) -> dict[str, Any]:
        """The error body."""
        doc: dict[str, Any] = {"error": self.message}
        if self.details:
            doc["details"] = self.details
        return doc
