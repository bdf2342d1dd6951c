"""Which optional C accelerators (setup.py) are built; each has a Python path giving the same answer."""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger("tabserve")
MODULES = {
    "records_decoder": "service.protocols._records",  # plain /predict bodies straight into num/cat
    "level_codes": "service.scoring._levels",  # categorical codes of file columns without the GIL
}


def accelerators() -> dict[str, bool]:
    """Whether each accelerator is built."""
    built = {}
    for name, module in MODULES.items():
        try:
            importlib.import_module(module)
            built[name] = True
        except ImportError:
            built[name] = False
    return built


def report() -> dict[str, bool]:
    """Warn when one is missing (installed without a C compiler); return the state."""
    built = accelerators()
    missing = [name for name, ok in built.items() if not ok]
    if missing:
        log.warning("C accelerators not built (%s): the Python paths run instead, slower", ", ".join(missing))
    return built
