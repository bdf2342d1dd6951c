"""This checkout's root, first on sys.path and on the PYTHONPATH of every child process, on import:
a benchmark measures the code beside it, not the checkout the editable install (`pip install -e`) maps
`service` and `training` to."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
# children's `python -m` would put the current directory (maybe another checkout) ahead of PYTHONPATH
os.environ["PYTHONSAFEPATH"] = "1"
