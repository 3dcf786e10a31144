"""The config loader: the example file, defaults, every class of bad input, secrets, reload."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from kktd.config import (
    RESTART_KEYS,
    ApiConfig,
    BackoffConfig,
    Config,
    ConfigError,
    JournalConfig,
    KktConfig,
    LockConfig,
    LogConfig,
    OfdConfig,
    Secret,
    SyncConfig,
    UpstreamConfig,
    load_config,
    merge_for_reload,
    parse_config,
    render_config,
)
from tests.support.upstream import self_signed_cert

EXAMPLE = Path(__file__).resolve().parents[1] / "etc" / "kktd" / "kktd.toml"
SECRET = "s3cr3t-Token-42"


def _parse(text: str, tmp_path: Path, **environ: str) -> Config:
    return parse_config(text, tmp_path / "kktd.toml", environ=environ)


def _error(text: str, tmp_path: Path, **environ: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _parse(text, tmp_path, **environ)
    return caught.value


def test_the_example_file_loads_and_documents_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(EXAMPLE, environ={})
    # api.listen is the package's unix socket, not the built-in loopback port
    shipped = ApiConfig(listen="unix:/run/kktd/api.sock")
    assert cfg == Config(
        journal=JournalConfig(path=tmp_path / "kktd.db"), api=shipped, source=EXAMPLE
    )


def test_the_example_file_shows_every_key() -> None:
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    rendered = tomllib.loads(render_config(Config()))
    assert {name: list(table) for name, table in example.items()} == {
        name: list(table) for name, table in rendered.items()
    }


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    cfg = _parse("", tmp_path, STATE_DIRECTORY="/var/lib/kktd")
    assert cfg.kkt == KktConfig()
    assert cfg.upstream == UpstreamConfig()
    assert cfg.lock == LockConfig()
    assert cfg.ofd == OfdConfig()
    assert cfg.source == tmp_path / "kktd.toml"


def test_values_are_typed(tmp_path: Path) -> None:
    cfg = _parse(
        '[kkt]\nbaudrate = 9600\npoll_interval = "500ms"\nstart_fd = 163\n'
        '[sync]\ninterval = 2\n[backoff]\nbase = 0.5\nmax = "2m"\njitter = "none"\n',
        tmp_path,
    )
    assert cfg.kkt == KktConfig(baudrate=9600, poll_interval=0.5, start_fd=163)
    assert cfg.sync == SyncConfig(interval=2.0)
    assert cfg.backoff == BackoffConfig(base=0.5, max=120.0, jitter="none")


# ---- where the journal lives ----


def test_journal_defaults_to_the_systemd_state_directory(tmp_path: Path) -> None:
    cfg = _parse("", tmp_path, STATE_DIRECTORY="/var/lib/kktd:/var/lib/other")
    assert cfg.journal.path == Path("/var/lib/kktd/kktd.db")


def test_journal_defaults_to_the_working_directory_without_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _parse('[journal]\npath = ""\n', tmp_path / "etc").journal.path == tmp_path / "kktd.db"


def test_a_relative_journal_path_is_next_to_the_config_file(tmp_path: Path) -> None:
    cfg = _parse('[journal]\npath = "db/j.db"\n', tmp_path, STATE_DIRECTORY="/elsewhere")
    assert cfg.journal.path == tmp_path / "db" / "j.db"


# ---- bad input: every error names the file, the line and the dotted key ----


def test_an_unknown_key_suggests_the_near_one_on_its_line(tmp_path: Path) -> None:
    err = _error('[kkt]\nport = "/dev/ttyS0"\n\nbaudrat = 9600\n', tmp_path)
    assert (err.file, err.line, err.key) == (tmp_path / "kktd.toml", 4, "kkt.baudrat")
    assert err.message == "unknown key, did you mean 'baudrate'?"
    assert str(err) == f"{tmp_path / 'kktd.toml'}:4: kkt.baudrat: {err.message}"


def test_an_unknown_section_suggests_the_near_one(tmp_path: Path) -> None:
    err = _error("[kkt]\nbaudrate = 9600\n[upstraem]\nurl = 'http://x'\n", tmp_path)
    assert (err.line, err.key) == (3, "upstraem")
    assert err.message == "unknown section, did you mean 'upstream'?"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[sync]\nbatch_size = "50"', "sync.batch_size", 'from 1 to 1000, got "50"'),
        ("[sync]\nbatch_size = 50.0", "sync.batch_size", "got 50.0"),
        ("[kkt]\npassword = true", "kkt.password", "expected an integer from 0 to 99999999"),
        ("[kkt]\nport = 5", "kkt.port", "expected a string, got 5"),
        ("[backoff]\njitter = 1", "backoff.jitter", 'expected one of "full", "none", got 1'),
        ("kkt = 5", "kkt", "expected a table [kkt], got 5"),
        ("[journal]\npath = ['a']", "journal.path", "expected a string, got an array"),
        ("[lock]\nttl = true", "lock.ttl", "expected a duration such as"),
    ],
)
def test_a_wrong_type_is_an_error(text: str, key: str, expected: str, tmp_path: Path) -> None:
    err = _error(text + "\n", tmp_path)
    assert (err.line, err.key) == (text.count("\n") + 1, key)
    assert expected in err.message


@pytest.mark.parametrize(
    ("section", "setting", "expected"),
    [
        ("kkt", "baudrate = 1200", "expected one of 2400, 4800, 9600"),
        ("kkt", "password = 100000000", "from 0 to 99999999"),
        ("kkt", 'port = ""', "non-empty"),
        ("kkt", 'poll_interval = "10ms"', "from 0.05s to 3600s"),
        ("kkt", "start_fd = 0", '"next", "first" or an FD number'),
        ("kkt", 'start_fd = "last"', '"next", "first" or an FD number'),
        ("journal", "retention_days = 0", "from 1 to 36500"),
        ("upstream", 'timeout = "601s"', "above 0s and at most 600s"),
        ("upstream", "timeout = 0", "above 0s"),
        ("upstream", "max_in_flight = 65", "from 1 to 64"),
        ("upstream", 'url = "ftp://collector.example/"', "http:// or https://"),
        ("upstream", 'url = "https://"', "with a host"),
        ("sync", "batch_size = 1001", "from 1 to 1000"),
        ("sync", "max_attempts = 0", "from 1 to 1000"),
        ("sync", "interval = 0", "above 0s"),
        ("backoff", 'base = "0s"', "above 0s"),
        ("breaker", "failure_threshold = 0", "from 1 to 1000"),
        ("breaker", "reset_timeout = -1", "above 0s"),
        ("lock", 'ttl = "500ms"', "from 1s to 600s"),
        ("lock", 'ttl = "11m"', "from 1s to 600s"),
        ("lock", 'key = "kktd:sync"', 'containing "{fn}"'),
        ("lock", 'key = "kktd:{fn}:{host}"', "the only placeholder"),
        ("lock", 'key = "kktd:{{fn}}"', 'containing "{fn}"'),
        ("lock", 'redis_url = "http://127.0.0.1:6379"', "redis://, rediss:// or unix://"),
        ("lock", 'on_unavailable = "wait"', 'one of "proceed", "skip"'),
        ("api", 'listen = "8765"', '"host:port"'),
        ("api", 'listen = "127.0.0.1:99999"', '"host:port"'),
        ("api", 'listen = "::1:8765"', "[::1]:port"),
        ("api", 'listen = "unix:run/kktd.sock"', "absolute socket path"),
        ("api", 'listen = "0.0.0.0:8765"', "loopback only"),
        ("api", 'listen = "192.168.1.10:8765"', "loopback only"),
        ("log", 'level = "trace"', '"debug", "info", "warning", "error"'),
        ("log", 'format = "text"', '"auto", "journal", "json", "console"'),
        ("ofd", 'mode = "on"', 'one of "off", "relay"'),
        ("ofd", "port = 0", "from 1 to 65535"),
    ],
)
def test_an_out_of_range_value_is_an_error(
    section: str, setting: str, expected: str, tmp_path: Path
) -> None:
    err = _error(f"# kktd\n[{section}]\n{setting}\n", tmp_path)
    assert (err.line, err.key) == (3, f"{section}.{setting.partition(' =')[0]}")
    assert expected in err.message


@pytest.mark.parametrize(
    ("key", "url", "hint"),
    [
        ("lock.redis_url", "redis://:hunter2@127.0.0.1:6379/0", "lock.password_file"),
        ("lock.redis_url", "rediss://kktd:hunter2@redis.example", "lock.password_file"),
        ("upstream.url", "https://kktd:hunter2@collector.example/in", "upstream.token_file"),
        ("upstream.url", "https://hunter2.example:99999/in", "an http:// or https:// URL"),
    ],
)
def test_a_bad_url_is_refused_without_echoing_it(
    key: str, url: str, hint: str, tmp_path: Path
) -> None:
    section, name = key.split(".")
    err = _error(f'[{section}]\n{name} = "{url}"\n', tmp_path)
    assert (err.line, err.key) == (2, key)
    assert hint in err.message
    assert "hunter2" not in str(err)


def test_accepted_addresses_and_urls(tmp_path: Path) -> None:
    cfg = _parse(
        '[lock]\nredis_url = "unix:///run/redis/redis.sock"\nkey = "k:{fn}:{{x}}"\n'
        '[api]\nlisten = "[::1]:8765"\n[upstream]\nurl = "http://10.0.0.5:8080/in"\n',
        tmp_path,
    )
    assert cfg.lock.redis_url == "unix:///run/redis/redis.sock"
    assert cfg.api.listen == "[::1]:8765"
    assert _parse('[api]\nlisten = "unix:/run/kktd/api.sock"\n', tmp_path).api.listen


def test_backoff_max_below_base_is_an_error_on_the_key_written(tmp_path: Path) -> None:
    err = _error('[backoff]\nbase = "10s"\nmax = "5s"\n', tmp_path)
    assert (err.line, err.key) == (3, "backoff.max")
    err = _error('[backoff]\nbase = "2m"\n', tmp_path)
    assert (err.line, err.key) == (2, "backoff.base")
    assert err.message == "backoff.max must be at least backoff.base"


def test_the_ofd_relay_needs_a_host(tmp_path: Path) -> None:
    err = _error('[ofd]\nmode = "relay"\n', tmp_path)
    assert (err.line, err.key) == (2, "ofd.mode")
    cfg = _parse('[ofd]\nmode = "relay"\nhost = "f1.taxcom.ru"\ntimeout = "30s"\n', tmp_path)
    assert cfg.ofd == OfdConfig(mode="relay", host="f1.taxcom.ru", timeout=30.0)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    err = caught.value
    assert (err.line, err.key) == (None, "-")
    assert str(err) == f"{tmp_path / 'absent.toml'}: -: cannot read: No such file or directory"


def test_a_file_that_is_not_utf8_is_an_error_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "kktd.toml"
    path.write_bytes(b'[kkt]\nport = "/dev/\xff"\n')
    with pytest.raises(ConfigError, match=r"kktd.toml:2: -: not UTF-8 text$"):
        load_config(path, environ={})


def test_a_missing_ca_file_is_an_error(tmp_path: Path) -> None:
    err = _error('[upstream]\nca_file = "ca.pem"\n', tmp_path)
    assert (err.line, err.key) == (2, "upstream.ca_file")
    cert, _ = self_signed_cert(tmp_path)
    cert.rename(tmp_path / "ca.pem")
    assert _parse('[upstream]\nca_file = "ca.pem"\n', tmp_path).upstream.ca_file == (
        tmp_path / "ca.pem"
    )


# ---- secrets ----


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_secret_files_fill_the_secrets_next_to_the_config(tmp_path: Path) -> None:
    _write(tmp_path / "upstream.token", f"  {SECRET}\n")
    _write(tmp_path / "secrets" / "api.token", "api-tok\n")
    redis_password = _write(tmp_path / "redis.pass", "pw")
    cfg = _parse(
        '[upstream]\ntoken_file = "upstream.token"\n[api]\ntoken_file = "secrets/api.token"\n'
        f'[lock]\npassword_file = "{redis_password}"\n',
        tmp_path,
    )
    assert cfg.upstream.token == Secret(SECRET)
    assert cfg.upstream.token_file == tmp_path / "upstream.token"
    assert cfg.api.token is not None
    assert cfg.api.token.reveal() == "api-tok"
    assert cfg.lock.password == Secret("pw")
    assert cfg.lock.password_file == redis_password


def test_an_empty_secret_path_means_no_secret(tmp_path: Path) -> None:
    cfg = _parse('[upstream]\ntoken_file = ""\n[api]\ntoken_file = ""\n', tmp_path)
    assert (cfg.upstream.token_file, cfg.upstream.token) == (None, None)
    assert (cfg.api.token_file, cfg.api.token) == (None, None)


def test_systemd_credentials_are_preferred_when_the_file_is_there(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    _write(credentials / "token", "from-systemd")
    _write(tmp_path / "token", "from-etc")
    _write(tmp_path / "api.token", "api-from-etc")
    cfg = _parse(
        '[upstream]\ntoken_file = "token"\n[api]\ntoken_file = "api.token"\n',
        tmp_path,
        CREDENTIALS_DIRECTORY=str(credentials),
    )
    assert cfg.upstream.token == Secret("from-systemd")
    assert cfg.upstream.token_file == credentials / "token"
    assert cfg.api.token == Secret("api-from-etc")  # not among the credentials: next to the file


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "cannot read .*token: No such file or directory"),
        (lambda p: p.mkdir(), "cannot read .*token: Is a directory"),
        (lambda p: p.write_text(" \n", encoding="utf-8"), ".*token is empty"),
    ],
)
def test_an_unusable_secret_file_is_an_error_on_its_key(
    make: Callable[[Path], object], reason: str, tmp_path: Path
) -> None:
    make(tmp_path / "token")
    err = _error('[kkt]\nbaudrate = 9600\n[upstream]\ntoken_file = "token"\n', tmp_path)
    assert (err.line, err.key) == (4, "upstream.token_file")
    assert re.fullmatch(reason, err.message)


def test_a_ca_file_that_is_not_pem_is_an_error_on_its_key(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n", encoding="utf-8")
    err = _error('[upstream]\nca_file = "ca.pem"\n', tmp_path)
    assert (err.line, err.key) == (2, "upstream.ca_file")
    assert "not a PEM CA bundle" in err.message


def test_client_commands_load_a_config_whose_secrets_they_cannot_read(tmp_path: Path) -> None:
    """An operator's `kktd status` runs outside the unit, without its credentials."""
    config = tmp_path / "kktd.toml"
    config.write_text('[upstream]\ntoken_file = "upstream-token"\n', encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(config, environ={})
    cfg = load_config(config, environ={}, client=True)
    assert cfg.upstream.token is None
    assert cfg.upstream.token_file == tmp_path / "upstream-token"


def test_secrets_never_appear_in_repr_str_or_render(tmp_path: Path) -> None:
    for name in ("up", "api", "redis"):
        _write(tmp_path / name, SECRET)
    cfg = _parse(
        '[upstream]\ntoken_file = "up"\n[api]\ntoken_file = "api"\n'
        '[lock]\npassword_file = "redis"\n',
        tmp_path,
    )
    rendered = render_config(cfg)
    for shown in (repr(cfg), str(cfg), rendered, repr(cfg.upstream.token), str(cfg.lock.password)):
        assert SECRET not in shown
    assert rendered.count("<redacted>") == 3
    assert f'token_file = "{tmp_path / "up"}"  # token: <redacted>' in rendered


# ---- print-config and reload ----


def test_rendered_config_parses_back_equal(tmp_path: Path) -> None:
    self_signed_cert(tmp_path)[0].rename(tmp_path / "ca.pem")
    cfg = Config(
        kkt=KktConfig(
            port="/dev/ttyUSB0", baudrate=4800, password=0, poll_interval=0.05, start_fd=7
        ),
        journal=JournalConfig(path=tmp_path / "j.db", retention_days=30),
        upstream=UpstreamConfig(
            url="http://127.0.0.1:9/r", ca_file=tmp_path / "ca.pem", timeout=2.5, max_in_flight=1
        ),
        sync=SyncConfig(interval=0.1, batch_size=1000, max_attempts=1),
        backoff=BackoffConfig(base=0.25, max=0.25, jitter="none"),
        lock=LockConfig(redis_url="redis://127.0.0.1:1/2", key="кассы:{fn}", ttl=600.0),
        api=ApiConfig(listen="unix:/run/kktd/api.sock"),
        log=LogConfig(level="debug", format="json"),
        ofd=OfdConfig(mode="relay", host="ofd.example", port=21101, timeout=0.5),
        source=tmp_path / "kktd.toml",
    )
    assert parse_config(render_config(cfg), tmp_path / "kktd.toml", environ={}) == cfg


def test_rendered_config_with_secrets_reads_the_same_files_back(tmp_path: Path) -> None:
    _write(tmp_path / "tok", SECRET)
    cfg = _parse('[upstream]\ntoken_file = "tok"\n[kkt]\nstart_fd = "first"\n', tmp_path)
    assert _parse(render_config(cfg), tmp_path) == cfg


def test_reload_keeps_restart_keys_and_applies_the_rest(tmp_path: Path) -> None:
    (tmp_path / "redis-a").write_text("a\n", encoding="utf-8")
    (tmp_path / "redis-b").write_text("b\n", encoding="utf-8")
    old = _parse(
        '[lock]\nredis_url = "redis://127.0.0.1:6380/0"\npassword_file = "redis-a"\n',
        tmp_path,
        STATE_DIRECTORY="/var/lib/kktd",
    )
    new = _parse(
        '[kkt]\nport = "/dev/ttyS1"\nbaudrate = 9600\npassword = 29\npoll_interval = "2s"\n'
        '[journal]\npath = "/tmp/other.db"\n[api]\nlisten = "127.0.0.1:9999"\n'
        '[lock]\nredis_url = "redis://127.0.0.1:6381/0"\npassword_file = "redis-b"\n'
        'ttl = "20s"\n[sync]\nbatch_size = 10\n',
        tmp_path,
    )
    applied, held = merge_for_reload(old, new)
    assert held == list(RESTART_KEYS)
    assert applied.kkt == replace(old.kkt, poll_interval=2.0)
    assert applied.journal == old.journal
    assert applied.api == old.api
    assert applied.lock == replace(old.lock, ttl=20.0)
    assert applied.lock.password == Secret("a")
    assert applied.sync == SyncConfig(batch_size=10)


def test_a_changed_redis_password_in_the_same_file_is_held_for_a_restart(tmp_path: Path) -> None:
    secret = tmp_path / "redis-pw"
    secret.write_text("old\n", encoding="utf-8")
    text = '[lock]\nredis_url = "redis://127.0.0.1:6380/0"\npassword_file = "redis-pw"\n'
    old = _parse(text, tmp_path)
    secret.write_text("new\n", encoding="utf-8")
    applied, held = merge_for_reload(old, _parse(text, tmp_path))
    assert held == ["lock.password_file"]
    assert applied.lock.password == Secret("old")


def test_reload_without_restart_changes_applies_the_new_config(tmp_path: Path) -> None:
    old = _parse("", tmp_path, STATE_DIRECTORY="/s")
    new = _parse('[log]\nlevel = "debug"\n', tmp_path, STATE_DIRECTORY="/s")
    assert merge_for_reload(old, new) == (new, [])


# ---- kkt.port: a device path or tcp://HOST[:PORT] (issue 13) ----


@pytest.mark.parametrize(
    "port", ["/dev/ttyS0", "/dev/kkt0", "tcp://192.168.137.111", "tcp://[::1]:7778", "tcp://kkt"]
)
def test_the_kkt_port_is_a_device_path_or_a_tcp_address(port: str, tmp_path: Path) -> None:
    cfg = _parse(f'[kkt]\nport = "{port}"\n', tmp_path)
    assert cfg.kkt.port == port  # kept as written: the link reads it the same way
    assert cfg.warnings == ()


@pytest.mark.parametrize(
    ("port", "explained"),
    [
        ("tcp://192.168.1.300:7778", "not an IPv4 address: 192.168.1.300"),
        ("tcp://10.0.0.5:99999", "expected a TCP port from 1 to 65535"),
        ("udp://10.0.0.5", '"udp://" is not a way to reach a KKT'),
        ("10.0.0.5:7778", "needs the tcp:// prefix: tcp://10.0.0.5:7778"),
        ("COM1", "on Linux COM1 is /dev/ttyS0"),
    ],
)
def test_a_malformed_kkt_port_is_explained_on_its_line(
    port: str, explained: str, tmp_path: Path
) -> None:
    err = _error(f'[kkt]\npassword = 30\nport = "{port}"\n', tmp_path)
    assert (err.line, err.key) == (3, "kkt.port")
    assert explained in err.message


def test_a_baud_rate_given_with_a_tcp_port_is_a_warning_on_its_line(tmp_path: Path) -> None:
    cfg = _parse('[kkt]\nport = "tcp://10.0.0.5"\n\nbaudrate = 9600\n', tmp_path)
    assert cfg.kkt.baudrate == 9600
    (warning,) = cfg.warnings
    assert warning.startswith(f"{tmp_path / 'kktd.toml'}:4: kkt.baudrate: ignored: ")
    assert _parse('[kkt]\nport = "tcp://10.0.0.5"\n', tmp_path).warnings == ()
    assert _parse('[kkt]\nport = "/dev/ttyS0"\nbaudrate = 9600\n', tmp_path).warnings == ()
