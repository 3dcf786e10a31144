"""What the commands print: ages, tables, and the status report's next actions."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kktd.cli import render

NOW = 1_700_000_000.0

BASE: dict[str, Any] = {
    "version": "0.1.0",
    "instance": "till-1",
    "now": NOW,
    "uptime_seconds": 7500.0,
    "kkt": {
        "port": "/dev/kkt0",
        "connected": True,
        "since": NOW - 7200,
        "model": "ШТРИХ-М-01Ф",
        "last_error": None,
        "fn": "9999078900005488",
        "last_fd": 1234,
        "cursor": 1234,
        "journal_blocked": None,
    },
    "fn": {
        "level": "ok",
        "unsent": 0,
        "backlog_age_seconds": None,
        "days_left": None,
        "warnings": [],
        "message": None,
    },
    "journal": {
        "path": "/var/lib/kktd/kktd.db",
        "pending": 2,
        "synced": 1232,
        "dead": 0,
        "oldest_pending_age_seconds": 3.0,
        "journaled_total": 40,
        "recovered_from": None,
    },
    "sync": {
        "upstream": "https://collector.example/v1/receipts",
        "breaker": "closed",
        "retry_in_seconds": 0.0,
        "backoff_delay_seconds": 0.0,
        "backoff_failures": 0,
        "lock": {"holder": None, "fence": None, "held": False},
        "last_round": {
            "at": NOW - 5,
            "status": "completed",
            "synced": 3,
            "failed": 0,
            "dead": 0,
            "duration_seconds": 0.12,
        },
        "next_round_in_seconds": 5.0,
        "last_failure": None,
    },
    "config": {"file": "/etc/kktd/kktd.toml", "reload": None},
}


def status(**changes: dict[str, Any]) -> dict[str, Any]:
    """BASE with some sections' keys changed."""
    result = copy.deepcopy(BASE)
    for section, values in changes.items():
        result[section].update(values)
    return result


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "just now"),
        (12, "12 s ago"),
        (180, "3 min ago"),
        (7500, "2 h 5 min ago"),
        (7200, "2 h ago"),
        (5 * 86400, "5 days ago"),
        (None, "never"),
    ],
)
def test_ages_read_like_a_person_says_them(seconds: float | None, text: str) -> None:
    assert render.ago(seconds) == text


def test_numbers_are_grouped() -> None:
    assert render.number(1234567) == "1 234 567"
    assert render.number(None) == "-"


def test_tables_align_columns() -> None:
    assert render.table(("A", "LONGER"), [("xx", "1"), ("y", "22")]) == (
        "A   LONGER\nxx  1\ny   22"
    )


def test_a_healthy_till_reads_ok_with_ages_and_no_advice() -> None:
    report = render.status_report(status())
    assert report.startswith("kktd 0.1.0 on till-1, up 2 h 5 min: OK\n")
    assert "KKT         online: ШТРИХ-М-01Ф on /dev/kkt0, since 2 h ago" in report
    assert "1 232 synced, 2 pending (oldest 3 s ago), 0 dead" in report
    assert "Last round  5 s ago: completed, 3 synced" in report
    assert "What to do" not in report
    assert render.advice(status()) == []


def failure(outcome: str, status_code: int | None, reason: str) -> dict[str, Any]:
    return {"at": NOW - 30, "outcome": outcome, "status": status_code, "reason": reason}


@pytest.mark.parametrize(
    ("sync", "expected"),
    [
        (
            {
                "breaker": "open",
                "retry_in_seconds": 42.0,
                "last_failure": failure("forbidden", 401, "HTTP 401: bad token"),
            },
            "upstream refuses our token (401): check upstream.token_file",
        ),
        (
            {
                "breaker": "open",
                "retry_in_seconds": 42.0,
                "last_failure": failure("unreachable", None, "ClientConnectorError: refused"),
            },
            "upstream not reachable (ClientConnectorError: refused): check the network and"
            " upstream.url; next try in 42 s; nothing is lost: FDs wait in the journal",
        ),
        (
            {
                "backoff_failures": 2,
                "backoff_delay_seconds": 4.0,
                "last_failure": failure("transient", 503, "HTTP 503: busy"),
            },
            "upstream is failing (HTTP 503: busy); next try in 4 s; nothing is lost:"
            " FDs wait in the journal",
        ),
    ],
)
def test_upstream_trouble_names_the_cause_and_what_to_check(
    sync: dict[str, Any], expected: str
) -> None:
    assert render.advice(status(sync=sync)) == [expected]


def test_a_rejection_long_ago_on_a_healthy_upstream_needs_no_upstream_advice() -> None:
    sync = {"last_failure": failure("rejected", 422, "no INN")}
    assert render.advice(status(sync=sync)) == []


def test_every_kind_of_trouble_gets_its_next_action() -> None:
    bad = status(
        kkt={"connected": False, "last_error": "no KKT", "journal_blocked": "disk full"},
        fn={"level": "error", "message": "FN backlog to the OFD is 26 days old: check"},
        journal={"dead": 3, "recovered_from": "/var/lib/kktd/kktd.db.corrupt-1"},
        sync={
            "lock": {"holder": "till-2", "fence": 7, "held": False},
            "last_round": {**BASE["sync"]["last_round"], "status": "busy"},
        },
        config={"reload": {"ok": False, "at": NOW - 60, "error": "kktd.toml:3: sync: bad"}},
    )
    todo = render.advice(bad)
    assert [item.split(" ")[:3] for item in todo] == [
        ["the", "KKT", "does"],
        ["the", "journal", "cannot"],
        ["FN", "backlog", "to"],
        ["3", "FDs", "are"],
        ["the", "sync", "lock"],
        ["config", "reload", "failed:"],
        ["the", "journal", "was"],
    ]
    report = render.status_report(bad)
    assert "NEEDS ATTENTION (7)" in report
    assert "OFFLINE on /dev/kkt0 (no KKT), since 2 h ago" in report
    assert "Lock        held by till-2, fence 7" in report
    assert "reload FAILED 1 min ago: old config running" in report
    assert "`kktd dlq list`" in todo[3]


def test_a_lock_redis_refuses_shows_in_the_lock_line_with_its_next_step() -> None:
    problem = {
        "kind": "auth",
        "error": "AuthenticationError: invalid username-password pair",
        "next_step": "Redis refused kktd's password: put the password Redis expects in"
        " lock.password_file and restart kktd",
        "since": NOW - 60,
        "skipped_rounds": 4,
    }
    refused = status(sync={"lock": {"holder": None, "fence": None, "held": False}})
    refused["sync"]["lock"]["problem"] = problem
    report = render.status_report(refused)
    assert "Lock        REFUSED by Redis (auth): AuthenticationError: invalid" in report
    assert render.advice(refused) == [
        f"no FD is synced: {problem['next_step']}; kktd tries again every round"
    ]


def test_the_fn_line_shows_the_backlog_and_the_days_left() -> None:
    fn = {"unsent": 12, "backlog_age_seconds": 12 * 86400, "days_left": 18.0, "level": "warning"}
    report = render.status_report(status(fn=fn))
    assert (
        "FN -> OFD   12 FDs unsent, oldest 12 days ago; 18 days left before the FN blocks" in report
    )


def test_dlq_and_fleet_tables() -> None:
    dead = [
        {
            "fn": "1",
            "fd": 7,
            "doc_kind": "receipt",
            "doc_type": 3,
            "attempts": 20,
            "journaled_at": NOW - 3600,
            "reason": "HTTP 500: " + "x" * 200,
        }
    ]
    table = render.dlq_table(dead, NOW).splitlines()
    assert table[1].split()[:5] == ["1", "7", "receipt", "20", "60"]
    assert table[1].endswith("…")
    beats = [
        {
            "instance": "till-1",
            "fn": "1",
            "pending": 1200,
            "dead": 0,
            "breaker": "open",
            "kkt_connected": True,
            "fn_backlog_age_seconds": 4 * 86400,
            "fn_level": "warning",
            "at": NOW - 10,
        }
    ]
    row = render.fleet_table(beats, NOW).splitlines()[1]
    assert row.split("  ")[0] == "till-1"
    assert "1 200" in row
    assert "circuit OPEN" in row
    assert "4 days (warning)" in row
    assert row.endswith("10 s ago")
    assert render.fleet_table([], NOW).startswith("no live kktd instances")


def test_a_document_reads_as_fields_and_items() -> None:
    doc = {
        "fn": "1",
        "fd": 7,
        "state": "synced",
        "attempts": 1,
        "last_error": None,
        "journaled_at": NOW - 120,
        "synced_at": NOW - 60,
        "fields": {
            "doc_kind": "receipt",
            "total": 20000,
            "items": [{"name": "Хлеб", "price": 10000, "quantity": "2", "total": 20000}],
        },
    }
    text = render.document_report(doc, NOW)
    assert text.startswith("FD 7 of FN 1: receipt, synced\njournaled 2 min ago, 1 failed delivery")
    assert "total     200.00" in text
    assert "Хлеб  100.00  2    200.00" in text


# ---- text from outside kktd is cleaned of control characters ----

PWNED = "\x1b]0;pwned\x07\x1b[31mred"
CONTROLS = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]} | {"\u202e", "\u2028"}


def shown_controls(text: str, *, lines: bool = True) -> set[str]:
    return {c for c in text if c in CONTROLS} - ({"\n"} if lines else set())


@pytest.mark.parametrize(
    ("raw", "line", "block"),
    [
        (PWNED, "]0;pwned[31mred", "]0;pwned[31mred"),
        ("a\r\nb\rc\td\x0be", "a b c d e", "a\nb\nc d\ne"),
        ("csi\u009b2J nel\u0085x", "csi2J nel x", "csi2J nel\nx"),
        ("\u202eevil\u2066", "evil", "evil"),
        ("sep\u2028ara\u2029te", "sep ara te", "sep\nara\nte"),
        ("Кассир Иванов И.И.", "Кассир Иванов И.И.", "Кассир Иванов И.И."),
        (12, "12", "12"),
    ],
)
def test_clean_removes_control_characters_and_keeps_lines_only_in_a_block(
    raw: object, line: str, block: str
) -> None:
    assert render.clean(raw) == line
    assert render.clean(raw, block=True) == block


def test_json_text_escapes_what_json_leaves_raw_and_keeps_the_data() -> None:
    value = {"reason": PWNED + "\u009b\u2028\u202e\x7f", "model": "ШТРИХ"}
    text = render.json_text(value, indent=2)
    assert shown_controls(text) == set()
    assert "ШТРИХ" in text  # Cyrillic as is
    assert json.loads(text) == value


def test_the_status_report_shows_no_control_character_from_outside() -> None:
    report = render.status_report(
        status(
            kkt={"model": "ШТРИХ\x1b[2J", "port": "/dev/kkt0", "read_error": PWNED},
            sync={
                "breaker": "open",
                "retry_in_seconds": 30.0,
                "upstream": "https://c.example/in",
                "last_failure": failure("rejected", 422, PWNED + "\nWhat to do: nothing"),
                "lock": {"holder": "till-2\x1b[8m", "fence": 3, "held": False},
            },
            fn={"level": "warning", "message": "FN says\x07 hi", "warnings": ["w\x1b1"]},
        )
    )
    assert shown_controls(report) == set()
    assert "ШТРИХ[2J" in report
    # no line of its own injected by an upstream's text
    assert [line for line in report.splitlines() if line.startswith("What to do")] == [
        "What to do:"
    ]


def test_tables_of_outside_text_stay_aligned() -> None:
    text = render.table(("NAME", "X"), [("a\x1b[1mb", "1"), ("long name", "2")])
    assert text.splitlines() == ["NAME       X", "a[1mb      1", "long name  2"]
    beat = {"instance": "till\x1b]0;x\x07", "at": NOW, "breaker": "closed"}
    assert shown_controls(render.fleet_table([beat], NOW)) == set()
