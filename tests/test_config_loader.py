"""The generic config machinery: durations, checks, key lines, TOML errors, secret files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kktd.config_loader import (
    ConfigError,
    InvalidValueError,
    Source,
    duration,
    find_key_line,
    format_seconds,
    integer,
    one_of,
    parse_duration,
    read_sections,
    string,
    toml_value,
)


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("500ms", 0.5),
        ("100ms", 0.1),
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        (" 3s ", 3.0),
        (7, 7.0),
        (0.25, 0.25),
    ],
)
def test_durations_are_read_as_float_seconds(written: object, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize("written", ["10", "10 s", "10sec", "s", "", "-1s", "1d", True, [1]])
def test_a_malformed_duration_says_what_is_expected(written: object) -> None:
    with pytest.raises(InvalidValueError, match=r'expected a duration such as "500ms", "10s"'):
        parse_duration(written)


@pytest.mark.parametrize("written", ["1e999s", float("inf"), float("nan"), 10**400])
def test_an_infinite_duration_is_refused(written: object) -> None:
    with pytest.raises(InvalidValueError, match="finite"):
        parse_duration(written)


@pytest.mark.parametrize("seconds", [0.05, 0.1, 1.0, 1.5, 60.0, 1e-05, 3600.0, 0.3333333333333333])
def test_formatted_seconds_read_back_exactly(seconds: float) -> None:
    text = format_seconds(seconds)
    assert text.endswith("s")
    assert parse_duration(text) == seconds


def test_whole_seconds_are_formatted_without_a_fraction() -> None:
    assert format_seconds(60.0) == "60s"
    assert format_seconds(0.5) == "0.5s"


def test_duration_bounds_are_inclusive_unless_above() -> None:
    ttl = duration(1, 600)
    assert ttl("1s") == 1.0
    assert ttl("10m") == 600.0
    with pytest.raises(InvalidValueError, match='expected a duration from 1s to 600s, got "601s"'):
        ttl("601s")
    timeout = duration(0, 600, above=True)
    with pytest.raises(InvalidValueError, match="above 0s and at most 600s"):
        timeout(0)
    assert timeout("1ms") == 0.001


def test_a_boolean_is_not_an_integer() -> None:
    check = integer(0, 10)
    assert check(1) == 1
    with pytest.raises(InvalidValueError, match="expected an integer from 0 to 10, got true"):
        check(True)
    with pytest.raises(InvalidValueError, match=r"got 1\.0"):
        check(1.0)


def test_one_of_wants_the_same_type() -> None:
    check = one_of(9600, 115200)
    assert check(9600) == 9600
    with pytest.raises(InvalidValueError, match="expected one of 9600, 115200"):
        check(9600.0)
    with pytest.raises(InvalidValueError):
        one_of("info")(True)


@pytest.mark.parametrize(
    ("key", "line"),
    [
        (("kkt",), 2),
        (("kkt", "port"), 4),
        (("kkt", "baudrate"), 5),
        (("kkt", "poll_interval"), 2),  # absent: its table's line
        (("sync", "batch_size"), 9),  # quoted key in a dotted table header
        (("lock", "key"), 11),  # inline table
        (("lock",), 11),
        (("lock", "ttl", "x"), 11),  # below a key set inline: the inline table's line
        (("api", "listen"), 12),  # dotted key at the top level ...
        (("log", "level"), 17),  # ... a multi-line string in between is not scanned
        (("ofd", "port"), None),
    ],
)
def test_key_lines_are_found_in_the_text(key: tuple[str, ...], line: int | None) -> None:
    text = (
        "# port = 1 in a comment\n"  # 1
        "[kkt]\n"  # 2
        "# baudrate = 2\n"  # 3
        'port = "/dev/x"\n'  # 4
        "  baudrate = 9600  # trailing\n"  # 5
        "\n"  # 6
        "[ sync ]\n"  # 7
        "interval = 3\n"  # 8
        '"batch_size" = 5\n'  # 9
        "[top]\n"  # 10
        'lock = { ttl = 5, key = "k" }\n'  # 11
        'api.listen = "x"\n'  # 12
        'banner = """\n'  # 13
        "[log]\n"  # 14
        'level = "debug"\n'  # 15
        '"""\n'  # 16
        'log.level = "info"\n'  # 17
    )
    # The test text puts lock, api and log under [top]; look them up there.
    where = key if key[0] in ("kkt", "sync", "ofd") else ("top", *key)
    assert find_key_line(text, where) == line


def _read(text: str, tmp_path: Path) -> dict[str, dict[str, object]]:
    schema = {"kkt": {"port": string(), "baudrate": integer(1, 9)}, "log": {"level": string()}}
    return read_sections(Source(tmp_path / "k.toml", text, {}), schema)


def test_sections_read_only_the_keys_present(tmp_path: Path) -> None:
    assert _read("[kkt]\nbaudrate = 3\n", tmp_path) == {"kkt": {"baudrate": 3}, "log": {}}


def test_an_unknown_key_without_a_near_name_lists_the_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _read("[kkt]\nzzz = 1\n", tmp_path)
    assert caught.value.message == "unknown key, expected one of: port, baudrate"
    assert caught.value.line == 2


def test_invalid_toml_reports_tomllibs_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _read('[kkt]\nport = "/dev/x"\nbaudrate = \n', tmp_path)
    err = caught.value
    assert (err.line, err.key) == (3, "-")
    assert err.message.startswith("invalid TOML: ")
    assert "(column " in err.message
    assert str(err) == f"{tmp_path / 'k.toml'}:3: -: {err.message}"


def test_toml_unfinished_at_the_end_points_at_the_last_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _read('[kkt]\nport = "/dev', tmp_path)
    assert caught.value.line == 2


def test_secret_files_are_stripped_and_never_empty(tmp_path: Path) -> None:
    src = Source(tmp_path / "k.toml", "[api]\ntoken_file = 'tok'\n", {})
    (tmp_path / "tok").write_text("  abc\n", encoding="utf-8")
    assert src.read_secret(("api", "token_file"), tmp_path / "tok") == "abc"
    (tmp_path / "tok").write_text(" \n\t", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"k.toml:2: api.token_file: .*tok is empty$"):
        src.read_secret(("api", "token_file"), tmp_path / "tok")


def test_values_render_as_toml_that_reads_back() -> None:
    assert toml_value(None) == '""'
    assert toml_value(Path("/var/lib/kktd/kktd.db")) == '"/var/lib/kktd/kktd.db"'
    assert toml_value(0.5) == '"0.5s"'
    assert toml_value(7) == "7"
    assert toml_value('квитанция "1"\n\x7f') == '"квитанция \\"1\\"\\n\\u007f"'
