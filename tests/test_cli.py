"""The `tabserve` command as a user runs it: a real subprocess on the real data sets (its refusals of
bad input: the same command in this process, without a new process's seconds of imports each)."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from service import bundle, release
from service.scoring.local import Scorer, score_file
from tests.conftest import GERMAN, write_csv
from tests.service.conftest import copy_store
from tests.service.test_scoring import _cp1252_telco, _read, _telco_head, _write

QUICK_FLAGS = ["--epochs", "3", "--ensemble", "2", "--patience", "2", "--no-plots", "--screen", "off"]
GERMAN_ARGS = ["--data", str(GERMAN), "--target", "creditability"]


def tabserve(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed console script's module with a given model store."""
    env = {**os.environ, "TABSERVE_MODELS_DIR": str(store), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def tabserve_here(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    """The same command in this process (typer's runner): without the seconds a new process spends
    importing torch and scikit-learn, for tests that run it on a dozen files. An exception it raises
    comes back in stderr with its traceback."""
    import traceback

    from typer.testing import CliRunner

    from tabserve.cli import app

    result = CliRunner().invoke(app, list(args), env={"TABSERVE_MODELS_DIR": str(store)})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["tabserve", *args], result.exit_code, result.stdout, stderr)


def test_train_then_list(tmp_path: Path) -> None:
    run = tabserve("train", *GERMAN_ARGS, "--name", "credit", *QUICK_FLAGS, store=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "published credit version 1" in run.stdout
    assert "roc_auc" in run.stdout and "logistic regression" in run.stdout
    assert "member 1:" in run.stdout
    listed = tabserve("models", store=tmp_path)
    assert listed.returncode == 0
    assert "credit" in listed.stdout and "roc_auc" in listed.stdout


def test_an_integer_target_trained_as_classes_says_why_and_how_to_predict_a_number(tmp_path: Path) -> None:
    count = ["--data", str(GERMAN), "--target", "number_of_existing_credits_at_this_bank", "--name", "credits"]
    run = tabserve("train", *count, *QUICK_FLAGS, store=tmp_path)
    assert run.returncode == 0, run.stderr
    # the column table said only "multiclass target": a count of 1 to 4 became four classes, unexplained
    assert (
        "multiclass target: 4 whole-number values, taken as classes (a number with at most 10 is); --task" in run.stdout
    )
    duration = tabserve("train", *count[:3], "duration_in_month", "--name", "months", *QUICK_FLAGS, store=tmp_path)
    assert duration.returncode == 0 and "whole numbers" not in duration.stdout  # many values: regression


def test_config_file_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "train.toml"
    cfg.write_text('[train]\nhidden = [16]\nactivation = "tanh"\nepochs = 2\nensemble = 1\n')
    run = tabserve("train", *GERMAN_ARGS, "--config", str(cfg), "--no-plots", "--dropout", "0.1", store=tmp_path)
    assert run.returncode == 0, run.stderr
    config = release.resolve(tmp_path, "german_credit").metrics["config"]
    assert config["hidden"] == [16] and config["activation"] == "tanh" and config["dropout"] == 0.1
    # 2 epochs under a patience of 12: no "its bar ends at best epoch + 12"
    assert "1 member(s); each runs its 2 epoch(s), fewer than the patience (12), and keeps its best" in run.stdout


def test_train_options_come_from_the_config_fields(tmp_path: Path) -> None:
    from dataclasses import fields

    from training.config import TrainConfig

    run = tabserve("train", "--help", store=tmp_path)
    assert run.returncode == 0, run.stderr
    renamed = {"id_columns": "--id-column", "report_plots": "--plots"}
    for field in fields(TrainConfig):
        assert renamed.get(field.name, "--" + field.name.replace("_", "-")) in run.stdout, field.name
        assert field.metadata["help"], field.name
    for flag in ("--config", "--models", "--no-plots", "--no-batch-norm", "(default 64,32)", "(default 0.003)"):
        assert flag in run.stdout, flag


@pytest.mark.parametrize(
    ("args", "message", "command"),
    [
        (["--data", "missing.csv", "--target", "y"], "not found", tabserve_here),
        (
            ["--data", str(GERMAN), "--target", "nope"],
            "target column 'nope' is not in the data (columns: ",
            tabserve_here,
        ),
        # a new process: whatever its imports print on stderr would be seen too
        (["--data", str(GERMAN), "--target", "Creditability"], "did you mean 'creditability'?", tabserve),
        (["--data", str(GERMAN), "--target", "creditability", "--activation", "swish"], "activation", tabserve_here),
    ],
    ids=["missing", "no-such-target", "did-you-mean", "activation"],
)
def test_bad_input_one_line_error_nonzero_exit(
    tmp_path: Path, args: list[str], message: str, command: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    run = command("train", *args, "--name", "bad", *QUICK_FLAGS, store=tmp_path)
    assert run.returncode == 2
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert bundle.versions(tmp_path, "bad") == []


def test_one_class_target_publishes_nothing(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "one.csv", ["a", "b", "y"], [[i, i % 3, "yes"] for i in range(40)])
    run = tabserve_here("train", "--data", str(data), "--target", "y", "--name", "one", *QUICK_FLAGS, store=tmp_path)
    assert run.returncode == 2 and "one class" in run.stderr
    assert not (tmp_path / "one").exists() or bundle.versions(tmp_path, "one") == []


def test_cli_scores_and_reports(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    rows = _read(_telco_head(tmp_path / "head.csv", 30))
    rows[3]["tenure"], rows[4]["Contract"], rows[5]["Contract"] = "500", "Ten-year", "Ten-year"
    source = _write(tmp_path / "in.csv", rows)
    out, errs = tmp_path / "scored.csv", tmp_path / "errors.csv"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tabserve.cli",
            "score",
            "--model",
            "churn@1",
            "--input",
            str(source),
            "--output",
            str(out),
            "--errors",
            str(errs),
            "--keep",
            "gender",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TABSERVE_MODELS_DIR": str(store)},
    )
    assert run.returncode == 0, run.stderr
    assert "30 rows in, 30 scored, 0 with errors" in run.stdout
    # values the model never saw in training are scored, and the summary says how often
    assert "warnings on scored rows (3; the rows are scored; see each row's warning column):" in run.stdout
    assert "2 × field 'Contract': unseen level 'Ten-year' scored as missing" in run.stdout
    assert "1 × field 'tenure': above the largest value seen in training (72)" in run.stdout
    assert list(_read(out)[0]) == ["gender", "label", "probability", "warning", "error"]
    assert _read(errs) == []
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "tabserve.cli",
            "score",
            "--model",
            "nope",
            "--input",
            str(source),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TABSERVE_MODELS_DIR": str(store)},
    )
    assert missing.returncode == 2 and "no model named 'nope'" in missing.stderr


def test_cli_pipes_stdin_to_stdout(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    source = _telco_head(tmp_path / "in.csv", 40)
    score_file(Scorer(churn_bundle, "cpu"), source, tmp_path / "file.csv")
    command = [sys.executable, "-m", "tabserve.cli", "score", "--model", "churn", "--input", "-", "--output", "-"]
    env = {**os.environ, "TABSERVE_MODELS_DIR": str(store)}
    for data in (source.read_bytes(), gzip.compress(source.read_bytes())):  # plain or gzip, told by its bytes
        run = subprocess.run(command, input=data, capture_output=True, timeout=120, env=env)
        assert run.returncode == 0, run.stderr
        assert run.stdout == (tmp_path / "file.csv").read_bytes()  # nothing but the scores on stdout
        assert b"40 rows in, 40 scored, 0 with errors" in run.stderr
    # `--output - | head -1`: the reader stops early; the command stops as `cat` does there (128 +
    # SIGPIPE), with no error of its own (it said "error: [Errno 32] Broken pipe" and exited 2)
    big = tmp_path / "big.csv"
    big.write_bytes(source.read_bytes() + b"".join([source.read_bytes().split(b"\n", 1)[1]] * 2000))
    with open(big, "rb") as data:
        piped = subprocess.Popen(command, stdin=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert piped.stdout is not None and piped.stdout.readline().startswith(b'"customerID"')
        piped.stdout.close()
        _, stderr = piped.communicate(timeout=120)
    assert piped.returncode == 141 and b"error" not in stderr, stderr


def _piped(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    """`tabserve` as CI or nohup runs it: stdout a pipe, no COLUMNS to size it."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TABSERVE_MODELS_DIR"] = str(store)
    return subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_piped_training_output_keeps_each_line_whole_and_best_epochs_agree(tmp_path: Path) -> None:
    run = _piped(
        "train",
        *GERMAN_ARGS,
        "--name",
        "credit",
        "--epochs",
        "30",
        "--ensemble",
        "3",
        "--no-plots",
        "--screen",
        "off",
        store=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    member = re.compile(
        r"^  member (\d): best epoch (\d+) of (\d+): train loss \d\.\d{4}, val loss \d\.\d{4}, val AUC \d\.\d{4}$"
    )
    found = [m.groups() for m in map(member.match, lines) if m]
    assert len(found) == 3, run.stdout  # one whole line per member, none broken at 80 columns
    intro = next(line for line in lines if "each stops" in line)
    assert len(intro) > 80 and intro.endswith("unless validation improves")
    assert any(len(line) > 80 and line.startswith("  chosen on out-of-fold rows") for line in lines)
    members = release.resolve(tmp_path, "credit").metrics["members"]
    assert [(int(best), int(of)) for _, best, of in found] == [(m["best_epoch"], m["epochs"]) for m in members]
    assert all(m["epochs"] == min(m["best_epoch"] + 12, 30) for m in members)  # patience 12, counted from 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.csv", "--target", "y"], "data file not found: missing.csv"),
        (["--data", ".", "--target", "y"], "data file is not a file"),
        (["--data", str(GERMAN)], "a data file and a target column are required"),
        (["--data", str(GERMAN), "--target", "creditability", "--activation", "swish"], "activation"),
        (["--data", str(GERMAN), "--target", "creditability", "--threads", "0"], "threads must be ≥ 1"),
        (["--data", str(GERMAN), "--target", "creditability", "--lr", "0"], "--lr must be a number above 0"),
        (["--data", str(GERMAN), "--target", "creditability", "--max-vocab", "0"], "--max-vocab must be ≥ 1, not 0"),
        (["--data", str(GERMAN), "--target", "creditability", "--name", "a/b"], "model name 'a/b'"),
    ],
)
def test_bad_arguments_refused_before_torch_is_imported(args: list[str], message: str) -> None:
    """A wrong argument is answered at once: torch (seconds to import) is never loaded for it."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('torch imported: %s\\n' % ('torch' in sys.modules)))\n"
        "from tabserve.cli import main\n"
        f"sys.argv = ['tabserve', 'train', *{args!r}]\n"
        "main()\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert "torch imported: False" in run.stderr


@pytest.mark.parametrize("command", ["train", "serve"])
def test_every_flag_has_help_and_its_default(command: str) -> None:
    import typer.main

    from tabserve.cli import app

    cli = typer.main.get_command(app)
    for param in cli.commands[command].params:  # type: ignore[attr-defined]
        if param.name == "help":
            continue
        assert param.help, param.name
        assert "default" in param.help or "(required)" in param.help, (param.name, param.help)


def test_score_refuses_an_output_format_before_any_work(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    source = _telco_head(tmp_path / "in.csv", 20)
    run = tabserve(
        "score", "--model", "churn", "--input", str(source), "--output", str(tmp_path / "out.xlsx"), store=store
    )
    assert run.returncode == 2 and "rows in" not in run.stdout
    assert len(run.stderr.strip().splitlines()) == 1
    assert "out.xlsx: not an output format; tabserve writes .csv (or .txt), .csv.gz, .parquet, or - for" in run.stderr
    # the output formats are listed, not the input ones (JSON lines, Excel)
    for name in ["out.jsonl", "out.json", "out.tsv"]:
        refused = tabserve_here(
            "score", "--model", "churn", "--input", str(source), "--output", str(tmp_path / name), store=store
        )
        assert refused.returncode == 2 and "tabserve writes .csv" in refused.stderr, refused.stderr
        assert ".xlsx" not in refused.stderr and "JSON lines" not in refused.stderr
    for name in ["errors.xlsx", "errors.csv.gz", "errors.parquet"]:  # the failed rows are plain CSV
        out, errors = str(tmp_path / "out.csv"), str(tmp_path / name)
        refused = tabserve_here(
            "score", "--model", "churn", "--input", str(source), "--output", out, "--errors", errors, store=store
        )
        assert refused.returncode == 2 and "name the file .csv" in refused.stderr, refused.stderr
    assert not list(tmp_path.glob("*out*"))


def test_score_names_the_encoding_that_reads_rows_not_utf8(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    source, bad = _cp1252_telco(tmp_path / "cp1252.csv")
    out = tmp_path / "out.csv"
    run = tabserve("score", "--model", "churn", "--input", str(source), "--output", str(out), store=store)
    assert run.returncode == 0, run.stderr
    assert f"{bad:,} with errors" in run.stdout
    assert f"{bad:,} rows are not valid UTF-8: --encoding cp1252 reads them" in run.stdout
    # the flag named does read them: every row scored, the accented ids as written
    fixed = tabserve_here(
        "score", "--model", "churn", "--input", str(source), "--output", str(out), "--encoding", "cp1252", store=store
    )
    assert fixed.returncode == 0 and "0 with errors" in fixed.stdout and "not valid UTF-8" not in fixed.stdout
    assert sum("ü" in row["customerID"] for row in _read(out)) == bad


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (
            ["--threshold-rule", "1.5"],
            None,
            "--threshold-rule must be f1, youden, accuracy or a number between 0 and 1",
        ),
        (
            ["--threshold-rule", "50%"],
            None,
            "--threshold-rule must be f1, youden, accuracy or a number between 0 and 1",
        ),
        (["--drop", "telephone,creditability"], None, "--drop names the target 'creditability'"),
        ([], ("c.toml", 'ensemble = "two"\n'), "c.toml: ensemble must be a whole number, not 'two'"),
        ([], ("c.yaml", "hidden: [32, 16\nepochs: 3\n"), "c.yaml is not valid YAML (line 2, column 7)"),
        (["--hidden", "64,0"], None, "hidden layer sizes must be ≥ 1, not 64,0"),
        (["--hidden=-5"], None, "hidden layer sizes must be ≥ 1, not -5"),
        ([], ("c.toml", 'hidden = "32,-1"\n'), "c.toml: hidden layer sizes must be ≥ 1, not 32,-1"),
        (["--hidden", "64,x"], None, "--hidden takes whole numbers separated by commas, such as 128,64, not '64,x'"),
        (["--hidden", ""], None, "--hidden takes whole numbers separated by commas, such as 128,64, not ''"),
        # a file's empty list published a network of no hidden layer, which the flag refuses
        ([], ("c.toml", "hidden = []\n"), "c.toml: --hidden takes whole numbers separated by commas, such as 128,64"),
        ([], ("c.toml", 'hidden = ""\n'), "c.toml: --hidden takes whole numbers separated by commas, such as 128,64"),
        # scikit-learn's random_state message came after the column table
        (["--seed=-1"], None, "--seed must be a whole number from 0 to 4294967295, not -1"),
        (["--seed", "99999999999999"], None, "--seed must be a whole number from 0 to 4294967295"),
    ],
    ids=[
        *["threshold-above-1", "threshold-percent", "drop-target", "toml-type", "yaml-syntax"],
        *["hidden-zero", "hidden-negative", "hidden-file-negative", "hidden-text", "hidden-empty"],
        *["hidden-file-empty-list", "hidden-file-empty-text", "seed-negative", "seed-too-large"],
    ],
)
def test_bad_settings_refused_in_one_line_before_any_work(
    tmp_path: Path, args: list[str], config: tuple[str, str] | None, message: str
) -> None:
    """A bad threshold rule or config file is answered at once: not after every member trained, no traceback."""
    if config is not None:
        (tmp_path / config[0]).write_text(config[1])
        args = [*args, "--config", str(tmp_path / config[0])]
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('torch imported: %s\\n' % ('torch' in sys.modules)))\n"
        "from tabserve.cli import main\n"
        f"sys.argv = ['tabserve', 'train', *{[*GERMAN_ARGS, *args]!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "TABSERVE_MODELS_DIR": str(tmp_path)}  # a run that wrongly trains publishes nowhere else
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert run.stderr.splitlines() == [run.stderr.splitlines()[0], "torch imported: False"]


def test_column_lists_take_commas_and_a_spaced_target_names_its_column(tmp_path: Path) -> None:
    """`--drop a,b` and `--id-column a,b` as the docs say; `--target "creditability  "` as the header was written."""
    dropped, ids = ["telephone", "foreign_worker"], ["present_residence_since", "job"]
    flags = ["--epochs", "3", "--ensemble", "1", "--patience", "2", "--no-plots", "--screen", "off"]
    run = tabserve(
        *["train", "--data", str(GERMAN), "--target", "creditability  ", "--name", "spaced", *flags],
        *["--drop", ",".join(dropped), "--id-column", " , ".join(ids)],
        store=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    pre = release.resolve(tmp_path, "spaced").preprocess
    assert pre.target == "creditability" and pre.id_columns == ids
    assert not {f.name for f in pre.features} & {*dropped, *ids}


def test_decimal_reads_a_european_export_of_a_file_trained_with_points(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """`1.890` (thousands) and `29,85` in a `;` file: with `--decimal ,` each row scores as the plain
    file's (without it, `1.890` is 1.89: no mark in it says otherwise); an unknown mark is refused."""
    store = copy_store(churn_bundle, tmp_path / "models")
    rows = _read(_telco_head(tmp_path / "head.csv", 30))
    for row in rows:  # whole amounts: a European export writes 1890 as `1.890`
        row["TotalCharges"] = str(round(float(row["TotalCharges"]))) if row["TotalCharges"].strip() else ""
    plain = _write(tmp_path / "plain.csv", rows)
    for row in rows:
        row["MonthlyCharges"] = row["MonthlyCharges"].replace(".", ",")
        row["TotalCharges"] = f"{int(row['TotalCharges']):,}".replace(",", ".") if row["TotalCharges"] else ""
    with (tmp_path / "de.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]), delimiter=";")
        writer.writeheader()
        writer.writerows(rows)
    assert any("." in r["TotalCharges"] for r in rows)  # thousands written with a point
    for source, extra in ((plain, []), (tmp_path / "de.csv", ["--decimal", ","])):
        done = tabserve(
            "score",
            "--model",
            "churn",
            "--input",
            str(source),
            "--output",
            str(source.with_suffix(".out.csv")),
            *extra,
            store=store,
        )
        assert done.returncode == 0 and "30 scored" in done.stdout, done.stderr
    assert _read(tmp_path / "plain.out.csv") == _read(tmp_path / "de.out.csv")
    as_trained = tabserve(
        "score",
        "--model",
        "churn",
        "--input",
        str(tmp_path / "de.csv"),
        "--output",
        str(tmp_path / "pt.csv"),
        store=store,
    )
    assert as_trained.returncode == 0 and _read(tmp_path / "pt.csv") != _read(tmp_path / "de.out.csv")
    refused = tabserve(
        "score", "--model", "churn", "--input", str(plain), "--output", "x.csv", "--decimal", "x", store=store
    )
    assert refused.returncode == 2 and "--decimal is . or ," in refused.stderr


def test_score_says_a_file_read_as_utf8_over_the_training_files_encoding(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """A review: a model trained on a cp1252 file read a UTF-8 file whose first 64 KiB are ASCII as cp1252.
    It is read as UTF-8 now, and said with the flag that reads it the other way."""
    store = copy_store(churn_bundle, tmp_path / "models")
    saved = store / "churn" / "1" / bundle.PREPROCESS_FILE
    doc = json.loads(saved.read_text())
    saved.write_text(json.dumps({**doc, "read": {**doc["read"], "encoding": "cp1252"}}))
    header, *rows = _telco_head(tmp_path / "head.csv", 1200).read_text().splitlines(keepends=True)
    source, out = tmp_path / "utf8.csv", tmp_path / "out.csv"
    source.write_text(header + "".join(rows[:1000]) + "".join(r.replace("-", "\u00fc", 1) for r in rows[1000:]))
    run = tabserve_here("score", "--model", "churn", "--input", str(source), "--output", str(out), store=store)
    assert run.returncode == 0 and "1,200 scored" in run.stdout, run.stderr
    assert (
        f"note: {source} read as UTF-8, not as cp1252 (the training file's encoding): the first bytes beyond ASCII "
        "are UTF-8 (pass --encoding cp1252 if that is wrong)" in run.stdout
    )
    assert sum("\u00fc" in row["customerID"] for row in _read(out)) == 200
