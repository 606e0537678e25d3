"""Settings from the environment: parsing, validation errors that name the variable, and the docs table."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import gifting
import workers
from gifting import config
from gifting.config import ConfigError, Settings

FIELDS = dataclasses.fields(Settings)
SECRET = "s" * 32


def env_name(field_name: str) -> str:
    return next(f.metadata["env"] for f in FIELDS if f.name == field_name)


def test_empty_environment_gives_the_defaults() -> None:
    """With nothing set, every setting is its declared default."""
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.port, settings.dev_mode, settings.gift_rate_per_s) == (8000, False, 20.0)


def test_every_setting_has_an_env_name_and_help() -> None:
    """Each field names its variable (GIFTING_*, or REDIS_URL) and says what it means."""
    names = [f.metadata["env"] for f in FIELDS]
    assert len(names) == len(set(names))
    assert all(n == "REDIS_URL" or n.startswith("GIFTING_") for n in names)
    assert all(f.metadata["help"].strip() for f in FIELDS)


def test_values_are_parsed_by_type() -> None:
    """Ints, floats, strings and bools are read from their variables."""
    settings = Settings.from_env(
        {
            "GIFTING_PORT": "9001",
            "GIFTING_GIFT_RATE_PER_S": "2.5",
            "GIFTING_WS_PING_INTERVAL_S": "3",
            "GIFTING_HOST": "0.0.0.0",
            "REDIS_URL": "redis://example:6379/0",
            "GIFTING_SECRET": SECRET,
            "GIFTING_DEV": "1",
            "GIFTING_CREATOR_SHARE_BPS": "7000",
        }
    )
    assert settings.port == 9001 and type(settings.port) is int
    assert settings.gift_rate_per_s == 2.5 and settings.ws_ping_interval_s == 3.0
    assert (settings.host, settings.redis_url, settings.secret) == ("0.0.0.0", "redis://example:6379/0", SECRET)
    assert settings.dev_mode is True and settings.creator_share_bps == 7000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_bool_spellings(raw: str, expected: bool) -> None:
    """Booleans accept 1/true/yes/on and 0/false/no/off in any case."""
    assert Settings.from_env({"GIFTING_DEV": raw}).dev_mode is expected


def test_empty_value_means_default_and_overrides_win() -> None:
    """An empty variable is the same as unset; keyword overrides beat the environment."""
    assert Settings.from_env({"GIFTING_PORT": ""}).port == 8000
    assert Settings.from_env({"GIFTING_PORT": "9001"}, port=9002).port == 9002


@pytest.mark.parametrize(
    ("variable", "raw", "says"),
    [
        ("GIFTING_PORT", "abc", "expected int"),
        ("GIFTING_PORT", "80.5", "expected int"),
        ("GIFTING_TICK_MS", "fast", "expected int"),
        ("GIFTING_GIFT_RATE_PER_S", "lots", "expected float"),
        ("GIFTING_DEV", "maybe", "expected bool"),
    ],
)
def test_unparseable_value_names_the_variable(variable: str, raw: str, says: str) -> None:
    """A value that does not parse raises ConfigError naming the variable, the type and the value."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: raw})
    message = str(info.value)
    assert message.startswith(variable + ":") and says in message and repr(raw) in message


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("GIFTING_PORT", "-1"),
        ("GIFTING_GIFT_BURST", "-5"),
        ("GIFTING_GIFT_RATE_PER_S", "-0.5"),
        ("GIFTING_CREATOR_SHARE_BPS", "10001"),
        ("GIFTING_SECRET", "short"),
        ("GIFTING_TICK_MS", "0"),
        ("GIFTING_GIFT_COUNT_MAX", "0"),
        ("GIFTING_SETTLE_BATCH_MAX", "0"),
        ("GIFTING_WS_MESSAGE_BYTES_MAX", "70000"),
    ],
)
def test_invalid_value_names_the_variable(variable: str, raw: str) -> None:
    """A value out of range raises ConfigError whose message names the variable."""
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize("variable", ["GIFTING_GIFT_RATE_PER_S", "GIFTING_WS_PING_INTERVAL_S"])
def test_nan_is_rejected(variable: str) -> None:
    """NaN is not a value >= 0: a float setting of 'nan' raises ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: "nan"})


def test_secret_length_is_counted_in_bytes() -> None:
    """A secret of 32 bytes is enough; 31 is not."""
    assert Settings.from_env({"GIFTING_SECRET": "x" * 32}).secret == "x" * 32
    with pytest.raises(ConfigError, match="GIFTING_SECRET"):
        Settings.from_env({"GIFTING_SECRET": "x" * 31})


def test_markdown_table_lists_every_variable() -> None:
    """The docs table has one row per setting, each with its variable, default and help."""
    table = config.markdown_table()
    lines = table.splitlines()
    assert lines[:2] == ["| variable | default | meaning |", "| --- | --- | --- |"]
    assert len(lines) == 2 + len(FIELDS)
    for f, line in zip(FIELDS, lines[2:], strict=True):
        assert line.startswith(f"| `{f.metadata['env']}` |") and f.metadata["help"] in line
    assert f"| `{env_name('port')}` | `8000` |" in table
    assert f"| `{env_name('secret')}` | `(empty)` |" in table


def test_every_gifting_variable_named_in_the_code_is_in_the_table() -> None:
    """Every GIFTING_* name mentioned in the package's source is a documented setting."""
    table = config.markdown_table()
    roots = [Path(gifting.__file__).parent, Path(workers.__file__).parent]
    mentioned = {
        name
        for root in roots
        for path in root.rglob("*.py")
        for name in re.findall(r"\bGIFTING_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    assert mentioned, "expected the source to name some settings"
    assert {n for n in mentioned if f"`{n}`" not in table} == set()
