"""The optional C accelerators: reported when built, and their absence never silent."""

from __future__ import annotations

import logging

import httpx
import pytest

from service import accelerators
from tests.service.conftest import Server


def test_models_lists_the_built_accelerators(churn_server: Server) -> None:
    assert httpx.get(churn_server.url + "/models").json()["accelerators"] == {
        "records_decoder": True,
        "level_codes": True,
    }


def test_a_missing_accelerator_is_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(accelerators.MODULES, "records_decoder", "service.protocols._not_built")
    with caplog.at_level(logging.WARNING, logger="tabserve"):
        built = accelerators.report()
    assert built == {"records_decoder": False, "level_codes": True}
    assert "C accelerators not built (records_decoder)" in caplog.text
