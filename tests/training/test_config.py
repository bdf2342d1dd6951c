"""Training settings from flags and config files: every bad value is one ConfigError line, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TELCO
from training.config import ConfigError, build_config, load_config_file


def _settings(tmp_path: Path, name: str, text: str) -> Path:
    """A config file written by the test (TOML or YAML by its suffix)."""
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("rule", ["1.5", "nan", "foo", "50%", "0", "1", "inf", "-0.2"])
def test_a_threshold_rule_that_flags_no_one_or_means_nothing_is_refused(rule: str) -> None:
    with pytest.raises(
        ConfigError, match=r"^--threshold-rule must be f1, youden, accuracy or a number between 0 and 1"
    ):
        build_config(data=str(TELCO), target="Churn", threshold_rule=rule)


def test_a_threshold_rule_by_name_or_a_cut_off_strictly_inside_0_1_is_kept() -> None:
    for rule, kept in [("f1", "f1"), (" Youden ", "youden"), ("accuracy", "accuracy"), ("0.3", "0.3")]:
        assert build_config(data=str(TELCO), target="Churn", threshold_rule=rule).threshold_rule == kept


@pytest.mark.parametrize(
    ("name", "text", "key"),
    [
        ("c.toml", 'ensemble = "two"\n', "ensemble"),
        ("c.toml", '[train]\nbatch_norm = "yes"\n', "batch_norm"),
        ("c.yaml", "lr: fast\n", "lr"),
        ("c.yaml", 'hidden: "32,x"\n', "hidden"),
        ("c.yaml", "drop: {gender: 1}\n", "drop"),
        ("c.yml", "threshold_rule: [f1]\n", "threshold_rule"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_one_line_naming_the_file_and_key(
    tmp_path: Path, name: str, text: str, key: str
) -> None:
    path = _settings(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert str(path) in message and f" {key} must be " in message and "\n" not in message


def test_a_config_file_takes_the_flags_own_syntax(tmp_path: Path) -> None:
    """`hidden: "32,16"` as `--hidden 32,16`; a column list as one name or comma-separated names."""
    path = _settings(tmp_path, "c.yaml", 'hidden: "32,16"\ndrop: gender\nid_columns: "customerID, Partner"\n')
    cfg = build_config(path, data=str(TELCO), target="Churn", threshold_rule=None)
    assert (cfg.hidden, cfg.drop, cfg.id_columns) == ([32, 16], ["gender"], ["customerID", "Partner"])
    toml = _settings(tmp_path, "c.toml", "threshold_rule = 0.4\nhidden = 24\n")
    assert load_config_file(toml) == {"threshold_rule": "0.4", "hidden": [24]}


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [("c.yaml", "hidden: [32, 16\nepochs: 3\n", "(line 2, column 7)"), ("c.toml", "epochs = \n", "(at line 1, column")],
)
def test_a_config_syntax_error_names_the_file_and_line(tmp_path: Path, name: str, text: str, where: str) -> None:
    path = _settings(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert str(path) in message and where in message and "\n" not in message


def test_a_config_file_that_holds_no_settings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected settings as"):
        load_config_file(_settings(tmp_path, "c.yaml", "- epochs\n- 3\n"))


def test_every_column_list_splits_commas_and_strips_names() -> None:
    names = ("id_columns", "drop", "date_columns", "categorical", "numeric")
    for name in names:
        cfg = build_config(data=str(TELCO), target="Churn", **{name: ["gender, Partner", " tenure "]})
        assert getattr(cfg, name) == ["gender", "Partner", "tenure"], name


FLAGS = [("drop", "--drop"), ("id_columns", "--id-column"), ("numeric", "--numeric")]
FLAGS += [("categorical", "--categorical"), ("date_columns", "--date-columns")]


@pytest.mark.parametrize(("name", "flag"), FLAGS)
def test_the_target_named_in_a_column_list_is_refused(name: str, flag: str) -> None:
    """Leave it out, read it as a feature or pass it through? The user's intent is a guess."""
    with pytest.raises(ConfigError, match=rf"^{flag} names the target 'Churn'"):
        build_config(data=str(TELCO), target="Churn", **{name: ["gender,Churn "]})


def test_the_target_is_stripped_as_headers_are() -> None:
    assert build_config(data=str(TELCO), target="Churn  ").target == "Churn"
    with pytest.raises(ConfigError, match=r"^--drop names the target 'Churn'"):
        build_config(data=str(TELCO), target=" Churn ", drop=["Churn"])


def test_an_out_of_range_value_names_the_config_file_it_came_from(tmp_path: Path) -> None:
    """Named where it was written: the file, or no file when the bad value is a flag's."""
    path = tmp_path / "train.toml"
    path.write_text("threads = 0\nepochs = 3\n")
    with pytest.raises(ConfigError, match=rf"^config file {path}: threads must be ≥ 1, not 0$"):
        build_config(path, data=str(TELCO), target="Churn")
    with pytest.raises(ConfigError, match=r"^dropout must be in \[0, 1\)$"):
        build_config(path, data=str(TELCO), target="Churn", dropout=1.5)
    assert build_config(path, data=str(TELCO), target="Churn", threads=2).epochs == 3  # a flag wins
    path.write_text("epochs = 0\n")  # a message two settings share: the flag's mistake is not the file's
    with pytest.raises(ConfigError, match=r"^ensemble and epochs must be ≥ 1, batch_size ≥ 2$"):
        build_config(path, data=str(TELCO), target="Churn", batch_size=1)


def test_a_group_column_naming_the_target_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--group-column names the target 'Churn'"):
        build_config(data=str(TELCO), target="Churn", group_column=" Churn ")
    assert build_config(data=str(TELCO), target="Churn", group_column=" customerID ").group_column == "customerID"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"id_columns": ["tenure"], "numeric": ["tenure"]}, r"tenure \(--id-column and --numeric\)"),
        ({"drop": ["customerID"], "id_columns": ["customerID"]}, r"customerID \(--id-column and --drop\)"),
        ({"drop": ["gender"], "categorical": ["gender"]}, r"gender \(--drop and --categorical\)"),
    ],
)
def test_a_column_given_two_roles_is_refused(options: dict[str, list[str]], message: str) -> None:
    """An id that is also a number, a dropped column also kept: which was meant is a guess."""
    with pytest.raises(ConfigError, match=message):
        build_config(data=str(TELCO), target="Churn", **options)


def test_search_trials_without_a_search_time_are_refused() -> None:
    """`--tune-trials 3` alone ran no search at all, without a word."""
    with pytest.raises(ConfigError, match="--tune-trials counts the trials of --tune"):
        build_config(data=str(TELCO), target="Churn", tune_trials=3)
    assert build_config(data=str(TELCO), target="Churn", tune="30s", tune_trials=3).tune_trials == 3


@pytest.mark.parametrize(
    ("data", "name"), [("german.csv.gz", "german"), ("sales.2024.csv", "sales.2024"), ("x.parquet", "x")]
)
def test_the_default_name_is_the_files_without_its_suffixes(data: str, name: str) -> None:
    """`german.csv.gz` was published as `german.csv`."""
    assert build_config(data=data, target="y").name == name


@pytest.mark.parametrize("sep", [":", "^", "tab"])
def test_any_one_character_is_a_delimiter_as_the_help_says(sep: str) -> None:
    from dataclasses import fields

    from training.config import TrainConfig

    assert "one character" in next(f.metadata["help"] for f in fields(TrainConfig) if f.name == "sep")
    assert len(build_config(data=str(TELCO), target="Churn", sep=sep).sep or "") == 1
    with pytest.raises(ConfigError, match=r"^sep must be one character \(such as , ; tab \|\), not '::'$"):
        build_config(data=str(TELCO), target="Churn", sep="::")
