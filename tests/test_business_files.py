"""Business files as they really come (issue 21): each trains and scores with the `tabserve` commands a
user runs (in the test process: tests/test_cli.py's `tabserve_here`), to the same numbers as the clean
file (or a clear refusal); the service reads them the same way."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service import bundle, release
from tests.fixtures.make_business_files import Variant, make_all
from tests.service.conftest import Server, running_server, telco_records
from tests.test_cli import tabserve_here
from training.config import TrainConfig

# the quick settings of tests/test_cli.py, without the refit: the published model is the evaluated one
QUICK_FLAGS = ["--epochs", "3", "--ensemble", "2", "--patience", "2", "--no-plots", "--no-refit"]
SAME = 1e-6  # the same data read the same way trains the same model: equal up to float rounding
AUC_TOLERANCE = 0.03  # a variant that adds columns: its test AUC within the model's run-to-run spread


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Variant]:
    return make_all(tmp_path_factory.mktemp("business"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


_runs: dict[tuple[Path, str], tuple[str, Path]] = {}


def trained(variant: Variant, store: Path) -> tuple[str, Path]:
    """`tabserve train` on the variant (once per module): its output and the scores of its own file."""
    key = (store, variant.name)
    if key not in _runs:
        run = tabserve_here(
            "train", "--data", str(variant.path), "--target", variant.target, "--name", variant.name, *QUICK_FLAGS,
            store=store,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        out = store.parent / f"{store.name}-{variant.name}.csv"
        scored = tabserve_here(
            "score", "--model", variant.name, "--input", str(variant.path), "--output", str(out), store=store
        )
        assert scored.returncode == 0, scored.stdout + scored.stderr
        _runs[key] = (run.stdout, out)
    return _runs[key]


def probabilities(path: Path) -> list[float]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(row["error"] == "" for row in rows), [row["error"] for row in rows if row["error"]][:3]
    return [float(row["probability"]) for row in rows]


def auc_of(store: Path, name: str) -> float:
    return float(release.resolve(store, name).metrics["test"]["roc_auc"])


@pytest.mark.parametrize(
    "name", ["semicolon_comma", "cp1252", "money", "padded_header", "trailing_delimiter", "r_row_names", "dates"]
)
def test_each_file_trains_and_scores_as_its_clean_file(files: dict[str, Variant], store: Path, name: str) -> None:
    check_variant(files, store, name)  # more variants: tests/test_business_variants.py


def check_variant(files: dict[str, Variant], store: Path, name: str) -> None:
    """The variant trains and scores to its clean file's numbers (or within the model's spread, or
    with its warning), and says and types what it should."""
    variant = files[name]
    said, scored = trained(variant, store)
    for text in variant.says:
        assert text in said, said
    table = {row["column"]: row for row in release.resolve(store, name).preprocess.columns}
    for column, kind in variant.types.items():
        assert table[column]["type"] == kind, table[column]
    got = probabilities(scored)
    if variant.clean:  # the same numbers once read: the same model, the same scores
        _, clean_scored = trained(files[variant.clean], store)
        expected = probabilities(clean_scored)
        assert len(got) == len(expected)
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < SAME
    elif name == "leaked":
        assert table["churn_flag"]["warning"].startswith("column 'churn_flag' alone predicts Churn")
        ref = release.resolve(store, name)  # and the model card and metrics.json say it too
        assert any(w.startswith("column 'churn_flag'") for w in ref.metrics["warnings"])
        assert "**Warning:** column 'churn_flag' alone predicts Churn" in (ref.path / "model_card.md").read_text()
    else:
        trained(files["telco"], store)
        assert abs(auc_of(store, name) - auc_of(store, "telco")) < AUC_TOLERANCE


def test_old_bundles_read_as_before(files: dict[str, Variant], store: Path) -> None:
    """A preprocess.json without the new fields (an older bundle) loads and scores the clean file."""
    trained(files["telco"], store)
    ref = release.resolve(store, "telco")
    old = store / "telco_old" / "1"
    old.mkdir(parents=True)
    for item in ref.path.iterdir():
        (old / item.name).write_bytes(item.read_bytes())
    doc = json.loads((old / "preprocess.json").read_text())
    for key in ("read", "columns"):
        doc.pop(key)
    for feature in doc["features"]:
        feature.pop("match", None)
    (old / "preprocess.json").write_text(json.dumps(doc))
    out = store.parent / "old.csv"
    run = tabserve_here(
        "score", "--model", "telco_old", "--input", str(files["telco"].path), "--output", str(out), store=store
    )
    assert run.returncode == 0, run.stderr
    assert probabilities(out) == probabilities(trained(files["telco"], store)[1])


def test_unknown_format_and_failing_files_are_refused_with_the_reason(
    files: dict[str, Variant], store: Path, tmp_path: Path
) -> None:
    doc = tmp_path / "telco.json"
    doc.write_text("[]")
    run = tabserve_here("train", "--data", str(doc), "--target", "Churn", store=store)
    assert run.returncode == 2 and ".jsonl (JSON lines)" in run.stderr and ".xlsx" in run.stderr
    trained(files["telco"], store)
    text = files["telco"].path.read_text().splitlines()
    lines = [text[0], *(_garbled(line) for line in text[1:])]
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    run = tabserve_here("score", "--model", "telco", "--input", str(bad), "--output", str(out), store=store)
    assert run.returncode == 2, run.stdout
    assert "rows failed" in run.stderr and "field 'MonthlyCharges': expected a number" in run.stderr


def _garbled(line: str) -> str:
    fields = next(csv.reader([line]))
    fields[18] = "unknown"  # MonthlyCharges as some exports write a blank
    buffer = io.StringIO()
    csv.writer(buffer).writerow(fields)
    return buffer.getvalue().strip()


UPLOADED = ["semicolon_comma", "cp1252", "money", "padded_header", "dates", "trailing_delimiter", "r_row_names"]


@pytest.fixture(scope="module")
def server(files: dict[str, Variant], store: Path) -> Iterator[Server]:
    for name in ("telco", "german_signed", *UPLOADED):
        trained(files[name], store)
    with running_server(store) as running:
        yield running


@pytest.mark.parametrize("name", UPLOADED)
def test_the_http_upload_reads_a_file_as_training_did(
    files: dict[str, Variant], store: Path, server: Server, name: str
) -> None:
    variant = files[name]
    answer = httpx.post(
        f"{server.url}/models/{name}/score",
        content=variant.path.read_bytes(),
        headers={"content-type": "text/csv"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert all(row["error"] == "" for row in rows), rows[0]
    expected = probabilities(trained(variant, store)[1])
    assert max(abs(float(r["probability"]) - p) for r, p in zip(rows, expected, strict=True)) < SAME


def _business(record: dict[str, object], i: int) -> dict[str, object]:
    """The record as a business system sends it: money, decimal commas, shouted levels."""
    out = dict(record)
    monthly, total = out["MonthlyCharges"], out["TotalCharges"]
    out["MonthlyCharges"] = f"${monthly:,.2f}" if i % 2 else f"{monthly}".replace(".", ",")
    if isinstance(total, float):
        out["TotalCharges"] = f"{total:,.2f}".replace(",", " ").replace(".", ",") if i % 2 else f"${total:,.2f}"
    for field in ("Partner", "Dependents", "PaperlessBilling"):
        out[field] = str(out[field]).upper() if i % 3 else f"  {str(out[field]).lower()} "
    return out


def test_predict_reads_money_percent_comma_and_case_as_the_clean_record(
    files: dict[str, Variant], server: Server
) -> None:
    clean = telco_records(40)
    business = [_business(r, i) for i, r in enumerate(clean)]
    assert business[1]["MonthlyCharges"] == "$56.95" and business[2]["MonthlyCharges"] == "53,85"
    got, expected = (
        httpx.post(f"{server.url}/models/telco/predict", json={"records": records}).json()["predictions"]
        for records in (business, clean)
    )
    for a, b in zip(got, expected, strict=True):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < SAME
        assert "warnings" not in a, a  # no unseen level: YES is Yes
    rows = list(csv.DictReader(files["german_signed"].path.open(newline="")))[:20]
    rate = "installment_rate_in_percentage_of_disposable_income"
    plain = [{k: v for k, v in r.items() if k != "creditability"} for r in rows]
    shown = [{**r, rate: f"{r[rate]}%", "credit_amount": _accounting(r["credit_amount"])} for r in plain]
    got, expected = (
        httpx.post(f"{server.url}/models/german_signed/predict", json={"records": records}).json()["predictions"]
        for records in (shown, plain)
    )
    assert [a["probability"] for a in got] == [b["probability"] for b in expected]


def _accounting(amount: str) -> str:
    value = int(amount)
    return f"({-value:,})" if value < 0 else f"€{value:,}"


def test_ray_reads_a_file_as_training_did(files: dict[str, Variant], store: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray.data", reason="the Ray extra is not installed")
    import ray

    from service.scoring.ray_engine import output_files, score_with_ray

    variant = files["semicolon_comma"]
    _, local = trained(variant, store)
    try:
        summary = score_with_ray(release.resolve(store, variant.name), str(variant.path), tmp_path / "out.csv", cpus=2)
    finally:
        ray.shutdown()
    assert summary.rows_failed == 0
    got = [p for part in output_files(tmp_path / "out.csv") for p in probabilities(part)]
    assert max(abs(a - b) for a, b in zip(got, probabilities(local), strict=True)) < SAME


def test_a_date_feature_is_documented_and_exemplified_as_a_date(files: dict[str, Variant], store: Path) -> None:
    """/docs describes a date column as a date, and a bundle without a stored example row gets a date
    string that the model reads without a warning (not the age in days, which it would refuse)."""
    from service.api.schema import example_record, feature_doc, record_schema
    from service.features import Preprocess

    trained(files["dates"], store)
    pre = Preprocess.load(store / "dates" / "1" / bundle.PREPROCESS_FILE)
    dated = [f.name for f in pre.numeric if f.date is not None]
    assert dated
    record = example_record(pre)  # no metrics: the fallback of an older bundle
    enc = pre.encode_records([record])
    assert not enc.errors and not enc.warnings
    stored = json.loads((store / "dates" / "1" / bundle.METRICS_FILE).read_text())["data"]["example"]
    enc = pre.encode_records([stored])  # the real row the bundle keeps, dates as the file wrote them
    assert not enc.errors and not enc.warnings and all(isinstance(stored[name], str) for name in dated)
    docs = {d["name"]: d for d in feature_doc(pre)}
    schema = record_schema(pre)["properties"]
    for name in dated:
        assert isinstance(record[name], str) and docs[name]["kind"] == "date"
        assert "date" in schema[name]["description"]

    # KServe V2: a date is a BYTES tensor of text (it was declared FP64 and refused both a number and a date)
    from service.protocols.v2 import V2Codec, input_metadata

    assert {m["name"]: m["datatype"] for m in input_metadata(pre) if m["name"] in dated} == dict.fromkeys(
        dated, "BYTES"
    )
    numeric = {f.name for f in pre.numeric} - set(dated)
    inputs = [
        {"name": k, "shape": [1], "datatype": "FP64" if k in numeric else "BYTES", "data": [stored[k]]}
        for k in pre.kinds
    ]
    for body in ({"inputs": inputs}, {"inputs": inputs, "id": "two rows", "outputs": [{"name": "label"}]}):
        got = V2Codec(pre, 10).decode(json.dumps(body).encode(), {})
        np.testing.assert_array_equal(got.enc.num, enc.num)


@pytest.mark.parametrize("words", [["Süd", "Nord", "Ost", "West"], ["Café", "Crème", "Thé"]])
def test_a_western_export_reads_as_cp1252_where_code_pages_tie(words: list[str]) -> None:
    """One or two accented letters read alike by several code pages (cp775 read `Süd` as `S³d`, with
    cp1252 left out of the detector's list): the tie goes to cp1252, what Western exports are."""
    from service.scoring.files import detect_encoding

    rows = "".join(f"C{i:04d}\t{words[i % len(words)]}\t{i * 7 % 100}.5%\n" for i in range(400))
    assert detect_encoding(("id\tregion\tutil\n" + rows).encode("cp1252")) == "cp1252"


def _cyrillic_file(path: Path, words: list[str], encoding: str | None = "cp1251") -> Path:
    rows = "".join(f"{i},{words[i % len(words)]},{i * 7 % 100},{'yes' if i % 3 else 'no'}\n" for i in range(300))
    path.write_bytes(("id,answer,amount,churn\n" + rows).encode(encoding or "utf-8"))
    return path


def test_short_cyrillic_words_read_as_cp1251_not_a_dos_code_page() -> None:
    """`да`, `нет` read as cleanly in several code pages (the detector put cp1125, Ukrainian DOS,
    first): the better language fit, then the code page more files are written in."""
    from service.scoring.files import detect_encoding

    rows = "".join(f"{i},{['да', 'нет'][i % 2]},{i % 50}\n" for i in range(300))
    assert detect_encoding(("id,answer,amount\n" + rows).encode("cp1251")) == "cp1251"


def test_a_guessed_encoding_is_a_warning_that_shows_its_words_and_the_other_readings(tmp_path: Path) -> None:
    """`м`, `ж` (cp1251) are `ì`, `æ` in cp1252, which wins the tie: no detector can tell from the
    bytes, and the levels would become a vocabulary no UTF-8 request matches. Training says what it
    read and what cp1251 reads; --encoding settles it, and a UTF-8 file raises no warning."""
    from training.data import infer_schema
    from training.reading import read_csv

    cyrillic = _cyrillic_file(tmp_path / "gender.csv", ["м", "ж"])
    df = read_csv(cyrillic)
    (warning,) = df.attrs["warnings"]
    assert "not UTF-8; its encoding was guessed: cp1252, reading" in warning and "'ì'" in warning
    assert "cp1251 reads" in warning and "'м'" in warning and "'ж'" in warning
    cfg = TrainConfig(data=str(cyrillic), target="churn")
    assert infer_schema(df, cfg).warnings == [warning]  # printed, in metrics.json and the model card
    given = read_csv(cyrillic, encoding="cp1251")
    assert "warnings" not in given.attrs and set(given["answer"]) == {"м", "ж"}
    utf8 = read_csv(_cyrillic_file(tmp_path / "utf8.csv", ["м", "ж"], encoding=None))
    assert "warnings" not in utf8.attrs and set(utf8["answer"]) == {"м", "ж"}
