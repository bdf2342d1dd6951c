"""The layering the design relies on, read from the code's own imports: codecs know the contract and
the error kinds but no HTTP; the service never reaches training or torch."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
# what a codec may import from this project: the contract, its speed encoders, the error kinds, codecs
CODEC_MAY_IMPORT = ("service.features", "service.encoders", "service.explain", "service.errors", "service.protocols")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_codecs_import_only_the_contract_and_the_error_kinds() -> None:
    codecs = sorted((SERVICE / "protocols").glob("*.py"))
    assert len(codecs) >= 4
    for path in codecs:
        ours = {name for name in _imports(path) if name.split(".")[0] in ("service", "training", "tabserve")}
        wrong = {name for name in ours if not name.startswith(CODEC_MAY_IMPORT)}
        assert not wrong, f"{path.name} imports {sorted(wrong)}"
        third_party = {name.split(".")[0] for name in _imports(path)}
        assert not third_party & {"fastapi", "starlette", "uvicorn", "http", "httptools"}, path.name


def test_the_service_never_imports_training_or_torch() -> None:
    for path in SERVICE.rglob("*.py"):
        roots = {name.split(".")[0] for name in _imports(path)}
        assert not roots & {"training", "torch", "tabserve"}, path
