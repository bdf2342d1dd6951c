"""Type stub of the C accelerator (service/scoring/_levels.c)."""

from typing import Any

def level_codes(offsets: Any, data: Any, offset: int, length: int, levels: tuple[bytes, ...]) -> bytearray: ...

MAX_LEVELS: int
