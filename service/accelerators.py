"""The optional C accelerators (setup.py): which are built. Each speeds up a Python path that gives
the same answer; without one the service runs, slower, and says so."""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger("tabserve")
MODULES = {
    "records_decoder": "service.protocols._records",  # plain /predict bodies straight into num/cat
    "level_codes": "service.scoring._levels",  # categorical codes of file columns without the GIL
}


def accelerators() -> dict[str, bool]:
    """Each accelerator's name and whether it is built."""
    built = {}
    for name, module in MODULES.items():
        try:
            importlib.import_module(module)
            built[name] = True
        except ImportError:
            built[name] = False
    return built


def report() -> dict[str, bool]:
    """Log one line when an accelerator is missing (an install without a C compiler); the state."""
    built = accelerators()
    missing = [name for name, ok in built.items() if not ok]
    if missing:
        log.warning("C accelerators not built (%s): the Python paths run instead, slower", ", ".join(missing))
    return built
