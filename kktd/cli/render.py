"""Human-readable output of the client commands: ages, tables and the status report.

Pure functions of the API's JSON, so what `kktd status` says is tested without a daemon. The
report names the next action whenever something is wrong: an operator should not have to
interpret a breaker state or a counter to know what to do.

Much of what is shown came from outside kktd: an upstream's rejection text (or whoever sits on
an http:// path to it), item names and the model name from the KKT, instance names from Redis.
None of it reaches the terminal raw: `clean` takes out every control character, so nobody can
set the operator's window title, colours or worse. The journal keeps the text verbatim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kktd.contract import BREAKER_WORDS

_UPSTREAM = {state: words[1] for state, words in BREAKER_WORDS.items()}

# Line breaks of any kind (C0, NEL, Unicode's separators): a space, or "\n" in a block.
_BREAKS = re.compile(r"\r\n|[\n\v\f\r\x1c-\x1e\x85\u2028\u2029]")
# The rest of C0 (all but the "\n" a block keeps), DEL and C1 (ESC, BEL, CSI U+009B ...), and
# the bidirectional formatting characters, which make a terminal show text in another order.
_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# What JSON leaves raw of those: json.dumps escapes only U+0000..U+001F.
_JSON_RAW = re.compile(r"[\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(text: object, *, block: bool = False) -> str:
    """`text` safe to print on a terminal: control characters removed, line breaks a space.

    `block`: keep line breaks (as "\n") for text printed as lines of its own.
    """
    spaced = _BREAKS.sub("\n" if block else " ", str(text)).replace("\t", " ")
    return _CONTROLS.sub("", spaced)


def json_text(value: Any, *, indent: int | None = None) -> str:
    """JSON of `value` for a terminal: the data exactly, with DEL, C1 and bidi marks escaped."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _JSON_RAW.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def duration(seconds: float) -> str:
    """12 s, 3 min, 2 h 5 min, 4 days."""
    seconds = max(0.0, seconds)
    if seconds < 59.5:  # what rounds to 60 s reads as 1 min
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = int(minutes // 60)
    if hours < 48:
        rest = int(minutes - hours * 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    return f"{seconds / 86400:.0f} days"


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 2:
        return "just now"
    return f"{duration(seconds)} ago"


def since(status: dict[str, Any], at: float | None) -> str:
    """`at` (a wall-clock time from the daemon) as an age against the daemon's own clock."""
    return ago(None if at is None else status["now"] - at)


def number(value: int | None) -> str:
    """1 234 567: thin groups an operator reads at a glance."""
    return "-" if value is None else f"{value:,}".replace(",", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded. Cells are cleaned."""
    shown = [[clean(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in shown) for i in range(len(headers))]
    lines = []
    for row in shown:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def clip(text: str | None, width: int) -> str:
    if not text:
        return ""
    text = " ".join(clean(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- kktd status ----


def status_report(status: dict[str, Any]) -> str:
    kkt, fn, journal, sync, config = (
        status["kkt"],
        status["fn"],
        status["journal"],
        status["sync"],
        status["config"],
    )
    todo = advice(status)
    verdict = "OK" if not todo else f"NEEDS ATTENTION ({len(todo)})"
    head = (
        f"kktd {status['version']} on {status['instance']}, up {duration(status['uptime_seconds'])}"
    )
    rows = [
        ("KKT", _kkt_line(status, kkt)),
        ("FN", _fn_line(kkt)),
        ("FN -> OFD", _ofd_line(status, fn)),
        ("Journal", _journal_line(journal)),
        ("Upstream", _upstream_line(status, sync)),
        ("Last round", _round_line(status, sync)),
        ("Lock", _lock_line(status, sync)),
        ("Config", _config_line(status, config)),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{clean(head)}: {verdict}", ""]
    lines += [f"{name.ljust(width)}  {clean(text)}" for name, text in rows]
    if todo:
        lines += ["", "What to do:"]
        lines += [f"  - {clean(item)}" for item in todo]
    return "\n".join(lines)


def _kkt_line(status: dict[str, Any], kkt: dict[str, Any]) -> str:
    if kkt["connected"]:
        model = kkt["model"] or "unknown model"
        return f"online: {model} on {kkt['port']}, since {since(status, kkt['since'])}"
    error = f" ({clip(kkt['last_error'], 80)})" if kkt["last_error"] else ""
    when = "never connected" if kkt["since"] is None else f"since {since(status, kkt['since'])}"
    return f"OFFLINE on {kkt['port']}{error}, {when}"


def _fn_line(kkt: dict[str, Any]) -> str:
    if kkt["fn"] is None:
        return "not read yet"
    cursor = "nothing yet" if kkt["cursor"] is None else f"FD {kkt['cursor']}"
    return f"{kkt['fn']}, last FD {number(kkt['last_fd'])}, journaled up to {cursor}"


def _ofd_line(status: dict[str, Any], fn: dict[str, Any]) -> str:
    if fn["unsent"] is None:
        text = "backlog not read yet"
    elif fn["unsent"] == 0:
        text = "nothing unsent"
    else:
        age = fn["backlog_age_seconds"]
        oldest = "" if age is None else f", oldest {ago(age)}"
        left = (
            ""
            if fn["days_left"] is None
            else f"; {fn['days_left']:.0f} days left before the FN blocks"
        )
        text = f"{number(fn['unsent'])} FDs unsent{oldest}{left}"
    if fn["warnings"]:
        text += "; FN warns: " + ", ".join(fn["warnings"])
    if fn.get("read_at") is not None:
        text += f" (read {since(status, fn['read_at'])})"
    return text


def _journal_line(journal: dict[str, Any]) -> str:
    pending = f"{number(journal['pending'])} pending"
    if journal["oldest_pending_age_seconds"] is not None:
        pending += f" (oldest {ago(journal['oldest_pending_age_seconds'])})"
    skipped = journal.get("skipped") or 0
    return (
        f"{number(journal['synced'])} synced, {pending}, {number(journal['dead'])} dead;"
        f" {number(journal['journaled_total'])} journaled since start"
        + (f"; {number(skipped)} skipped by hand (kktd skip)" if skipped else "")
    )


def _upstream_line(status: dict[str, Any], sync: dict[str, Any]) -> str:
    state = _UPSTREAM.get(sync["breaker"], sync["breaker"])
    text = f"{sync['upstream']}: {state}"
    if sync["breaker"] == "open":
        text += f", next probe in {duration(sync['retry_in_seconds'])}"
    elif sync["backoff_failures"]:
        text += f", {sync['backoff_failures']} failed rounds in a row"
    failure = sync["last_failure"]
    if failure is not None and sync["breaker"] != "closed":
        text += f"; last failure {since(status, failure['at'])}: {clip(failure['reason'], 80)}"
    return text


def _round_line(status: dict[str, Any], sync: dict[str, Any]) -> str:
    report = sync["last_round"]
    nxt = sync["next_round_in_seconds"]
    upcoming = "running now" if nxt is None else f"next in {duration(nxt)}"
    if report is None:
        return f"none yet; {upcoming}"
    return (
        f"{since(status, report['at'])}: {report['status']}, {report['synced']} synced,"
        f" {report['failed']} failed, {report['dead']} dead in {report['duration_seconds']:.2f} s;"
        f" {upcoming}"
    )


def _lock_line(status: dict[str, Any], sync: dict[str, Any]) -> str:
    lock = sync["lock"]
    fence = "" if lock["fence"] is None else f", fence {lock['fence']}"
    if (problem := lock.get("problem")) is not None:
        return f"REFUSED by Redis ({problem['kind']}): {clip(problem['error'], 120)}"
    if lock["held"]:
        return f"held by this instance{fence}"
    if lock["holder"] and lock["holder"] != status["instance"]:
        return f"held by {lock['holder']}{fence}"
    return f"free{fence}"


def _config_line(status: dict[str, Any], config: dict[str, Any]) -> str:
    reload = config["reload"]
    if reload is None:
        return f"{config['file']}, not reloaded since start"
    if reload["ok"]:
        return f"{config['file']}, reloaded {since(status, reload['at'])}"
    return f"{config['file']}, reload FAILED {since(status, reload['at'])}: old config running"


def advice(status: dict[str, Any]) -> list[str]:
    """The next actions an operator should take, most urgent first; empty when all is well."""
    kkt, fn, journal, sync = status["kkt"], status["fn"], status["journal"], status["sync"]
    todo: list[str] = []
    if not kkt["connected"]:
        todo.append(
            f"the KKT does not answer on {kkt['port']}: check that it is on and its cable is in;"
            " kktd reconnects by itself (the FN keeps every document meanwhile)"
        )
    if kkt.get("stuck_at_fd") is not None:
        todo.append(
            f"FD {kkt['stuck_at_fd']} cannot be read from the KKT ({kkt['read_error']}); later FDs"
            " wait behind it in the FN, which keeps them all: power-cycle the KKT, and if the same"
            " FD still fails, call the KKT's service centre; only if they confirm it can never be"
            f" read: `kktd skip {kkt['fn']} {kkt['stuck_at_fd']} --reason TEXT`"
        )
    if kkt["journal_blocked"]:
        todo.append(
            f"the journal cannot be written ({kkt['journal_blocked']}): free disk space for"
            f" {journal['path']}; KKT reads resume by themselves"
        )
    if fn["level"] != "ok" and fn["message"]:
        todo.append(fn["message"])
    todo += _upstream_advice(sync)
    if journal["dead"]:
        todo.append(
            f"{number(journal['dead'])} FDs are dead (rejected or out of attempts):"
            " see `kktd dlq list`, fix the cause, then `kktd dlq retry --all`"
        )
    lock = sync["lock"]
    if (problem := lock.get("problem")) is not None:
        todo.append(f"no FD is synced: {problem['next_step']}; kktd tries again every round")
    report = sync["last_round"]
    if report is not None and report["status"] == "busy" and lock["holder"]:
        todo.append(
            f"the sync lock is held by {lock['holder']}: another kktd syncs this FN; if that till"
            " is gone for good, the lock expires by itself after lock.ttl"
        )
    reload = status["config"]["reload"]
    if reload is not None and not reload["ok"]:
        todo.append(
            f"config reload failed: {clip(reload['error'], 200)}; the old config keeps running:"
            " fix the file (`kktd check-config`), then reload again"
        )
    if journal["recovered_from"]:
        todo.append(
            f"the journal was damaged and moved aside to {journal['recovered_from']}:"
            " FDs are re-read from the FN; keep the old file for the vendor"
        )
    return todo


def _upstream_advice(sync: dict[str, Any]) -> list[str]:
    failure = sync["last_failure"]
    if failure is None or (sync["breaker"] == "closed" and not sync["backoff_failures"]):
        return []
    retry = f"next try in {duration(sync['retry_in_seconds'] or sync['backoff_delay_seconds'])}"
    kept = "nothing is lost: FDs wait in the journal"
    reason = clip(failure["reason"], 120)
    if failure["outcome"] == "forbidden":
        return [f"upstream refuses our token ({failure['status']}): check upstream.token_file"]
    if failure["outcome"] == "misrouted":
        # the reason names what answered and what to check
        return [f"upstream.url {sync['upstream']} does not reach the collector: {reason}; {kept}"]
    if failure["outcome"] == "unreachable":
        return [
            f"upstream not reachable ({reason}): check the network and upstream.url;"
            f" {retry}; {kept}"
        ]
    return [f"upstream is failing ({reason}); {retry}; {kept}"]


# ---- the other commands ----


def dlq_table(items: Sequence[dict[str, Any]], now: float) -> str:
    if not items:
        return "no dead FDs"
    rows = [
        (
            item["fn"],
            str(item["fd"]),
            item["doc_kind"] or str(item["doc_type"]),
            str(item["attempts"]),
            ago(now - _epoch(item["journaled_at"])),
            clip(item["reason"], 70),
        )
        for item in items
    ]
    return table(("FN", "FD", "KIND", "ATTEMPTS", "JOURNALED", "REASON"), rows)


def document_report(doc: dict[str, Any], now: float) -> str:
    fields = dict(doc["fields"])
    items = fields.pop("items", [])
    lines = [
        f"FD {doc['fd']} of FN {doc['fn']}: {fields.get('doc_kind', 'document')}, {doc['state']}",
        f"journaled {ago(now - _epoch(doc['journaled_at']))}",
    ]
    if doc["attempts"]:
        lines[-1] += f", {doc['attempts']} failed delivery attempts"
    if doc["synced_at"] is not None:
        lines.append(f"synced {ago(now - _epoch(doc['synced_at']))}")
    if doc["last_error"]:
        lines.append(f"last error: {doc['last_error']}")
    lines = [clean(line) for line in lines]
    lines.append("")
    keys = {key: clean(key) for key in fields}
    width = max((len(key) for key in keys.values()), default=0)
    lines += [
        f"{keys[key].ljust(width)}  {clean(_field(key, value))}" for key, value in fields.items()
    ]
    if items:
        rows = [
            (
                str(item.get("name", "")),
                _field("price", item.get("price")),
                str(item.get("quantity", "")),
                _field("total", item.get("total")),
            )
            for item in items
        ]
        lines += ["", table(("ITEM", "PRICE", "QTY", "TOTAL"), rows)]
    return "\n".join(lines)


def _epoch(moment: str | float) -> float:
    """A journal entry's time: ISO 8601 as the API sends it (or seconds, from an older daemon)."""
    if isinstance(moment, str):
        return datetime.fromisoformat(moment).timestamp()
    return float(moment)


_MONEY = frozenset({"total", "price", "cash", "card"})


def _field(key: str, value: Any) -> str:
    """Money in roubles (the FD holds kopecks); everything else as it is."""
    if value is None:
        return ""
    if key in _MONEY and isinstance(value, int):
        return f"{value / 100:.2f}"
    return str(value)


def fleet_table(beats: Sequence[dict[str, Any]], now: float) -> str:
    if not beats:
        return "no live kktd instances (no heartbeat in the last 45 s)"
    rows = []
    for beat in beats:
        backlog = beat.get("fn_backlog_age_seconds")
        level = beat.get("fn_level") or "ok"
        fn_state = "-" if backlog is None else duration(backlog)
        if level != "ok":
            fn_state += f" ({level})"
        rows.append(
            (
                beat["instance"],
                beat.get("fn") or "-",
                number(beat.get("pending")),
                number(beat.get("dead")),
                _UPSTREAM.get(beat.get("breaker", ""), str(beat.get("breaker"))),
                "online" if beat.get("kkt_connected") else "OFFLINE",
                fn_state,
                ago(now - beat["at"]),
            )
        )
    headers = ("INSTANCE", "FN", "PENDING", "DEAD", "UPSTREAM", "KKT", "FN BACKLOG", "SEEN")
    return table(headers, rows)
