"""Type stub of the C accelerator (service/protocols/_records.c)."""

from typing import Any

class Decoder:
    def __init__(
        self, numeric: list[str], categorical: list[tuple[str, list[str]]], ids: list[str], absent: object
    ) -> None: ...
    def decode(
        self, body: bytes | bytearray, max_records: int
    ) -> tuple[bytearray, bytearray, int, list[list[Any]]] | None: ...
