"""A gzip CSV trains as the plain file does: real files in tmp_path, a real training on german credit."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from service import bundle
from tests.conftest import GERMAN, quick_config
from training.reading import DataError, read_csv


def gzipped(source: Path, target: Path) -> Path:
    """A gzip copy of `source` (factory: the bundled file, compressed)."""
    target.write_bytes(gzip.compress(source.read_bytes()))
    return target


def test_a_gzip_csv_reads_as_the_csv_inside_it(tmp_path: Path) -> None:
    plain, packed = read_csv(GERMAN), read_csv(gzipped(GERMAN, tmp_path / "german.csv.gz"))
    assert packed.equals(plain) and packed.attrs["read"] == plain.attrs["read"]


def test_a_gz_that_does_not_unpack_or_holds_no_csv_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.csv.gz"
    fake.write_bytes(b"\x1f\x8b" + b"not gzip at all")
    with pytest.raises(DataError, match="not a readable gzip file"):
        read_csv(fake)
    json_inside = tmp_path / "rows.json.gz"
    json_inside.write_bytes(gzip.compress(b'[{"a": 1}]'))
    with pytest.raises(DataError, match="not a CSV text file"):
        read_csv(json_inside)


def test_a_gzip_csv_trains_the_model_the_plain_file_trains(tmp_path: Path) -> None:
    from training.pipeline import train

    def published(data: Path, store: str) -> bundle.BundleRef:
        cfg = quick_config(data, "creditability", tmp_path / store, name="credit", ensemble=1)
        result = train(cfg, say=lambda _: None)
        assert result.bundle is not None
        return result.bundle

    packed = gzipped(GERMAN, tmp_path / "german.csv.gz")
    a, b = published(GERMAN, "plain"), published(packed, "gzip")
    pre_a, pre_b = (json.loads((r.path / bundle.PREPROCESS_FILE).read_text()) for r in (a, b))
    assert pre_a == pre_b  # the same columns, read the same way
    for key in ("rows", "train_rows", "test_rows", "dropped_columns"):
        assert a.metrics["data"][key] == b.metrics["data"][key]
    assert a.metrics["test"] == pytest.approx(b.metrics["test"], abs=1e-9)  # the same rows score the same
    # the hash is of the file as given: the compressed bytes
    assert b.metrics["data"]["sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest()
