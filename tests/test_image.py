"""The serving image (Dockerfile) carries only the packages it copies: the service and the CLI must
import from them alone, and `train` must say why it cannot run there (it failed to start before)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import json, sys
ABSENT = {"training", "torch", "onnx", "pandas", "sklearn", "lightgbm", "optuna", "duckdb", "matplotlib", "ray"}

class NotInstalled:  # not in the image (training, every extra's packages): importing one fails as it would there
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
import service.app, tabserve.cli
from typer.testing import CliRunner
root = sys.argv[1]
used = sorted({m.split(".")[0] for m, mod in list(sys.modules.items())
               if getattr(mod, "__file__", None) and mod.__file__.startswith(root + "/") and "/.venv/" not in mod.__file__})
run = CliRunner().invoke(tabserve.cli.app, ["train", "--data", "x.csv", "--target", "y"])
print(json.dumps({"used": used, "code": run.exit_code, "said": run.output}))
"""


def test_the_serving_image_holds_every_package_the_service_and_cli_import() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    wheel_stage = dockerfile.split("FROM base AS wheel", 1)[1].split("\nFROM ", 1)[0]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", wheel_stage, re.M))
    assert {"service", "tabserve"} <= copied and "training" not in copied
    probe = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.splitlines()[-1])
    assert set(found["used"]) <= copied, f"imported but not in the image: {set(found['used']) - copied}"
    assert found["code"] == 2 and "no training code" in found["said"]
