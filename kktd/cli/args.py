"""The client commands' arguments (SPEC section 6): `kktd status`, `sync`, `dlq list|retry`,
`doc`, `export`, `fleet`, `skip`. They find the daemon through the same `--config` as `kktd run`.

Only the arguments live here, so that `kktd run` builds its parser without loading the client,
its rendering or its HTTP session: a command's code (`kktd.cli.commands`) is imported when it
runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from kktd.contract import FD_MAX, FN_DIGITS, parse_fd, parse_fn, parse_since

REASON_LIMIT = 500  # what the journal keeps (kktd/journal/skips.py)

Handler = Callable[[argparse.Namespace], int]


def _client(name: str) -> Handler:
    """The handler of `kktd <name>`: checks the arguments, then loads and runs the command."""

    def handler(args: argparse.Namespace) -> int:
        check: Callable[[argparse.Namespace], None] | None = getattr(args, "check", None)
        if check is not None:
            check(args)  # exits 2 with the parser's usage line
        from kktd.cli import commands  # noqa: PLC0415 - loaded only for a client command

        return commands.run(name, args)

    return handler


def _fd(text: str) -> int:
    fd = parse_fd(text)
    if fd is None:
        raise argparse.ArgumentTypeError(f"expected an FD number from 1 to {FD_MAX}")
    return fd


def _fn(text: str) -> str:
    fn = parse_fn(text)
    if fn is None:
        raise argparse.ArgumentTypeError(f"expected an FN number (up to {FN_DIGITS} digits)")
    return fn


def _full_fn(text: str) -> str:
    fn = parse_fn(text, full=True)
    if fn is None:
        raise argparse.ArgumentTypeError(
            f"expected the FN number ({FN_DIGITS} digits), got {text!r}"
        )
    return fn


def _reason(text: str) -> str:
    if not text.strip() or not text.isprintable() or len(text) > REASON_LIMIT:
        raise argparse.ArgumentTypeError(
            f"expected one line of text (1 to {REASON_LIMIT} characters) saying why"
        )
    return text


def _since(text: str) -> float:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and int(text) >= 1):
        raise argparse.ArgumentTypeError("expected a number from 1 to 999999999")
    return int(text)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    config_opt: argparse.ArgumentParser,
) -> None:
    """Add the client commands to the `kktd` parser."""
    output = argparse.ArgumentParser(add_help=False, parents=[config_opt])
    output.add_argument("--json", action="store_true", help="JSON for scripts")

    def add(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        command: str,
        help_text: str,
        *,
        json_output: bool = True,
    ) -> argparse.ArgumentParser:
        parents = [output if json_output else config_opt]
        parser = parent.add_parser(name, parents=parents, help=help_text)
        parser.set_defaults(handler=_client(command))
        return parser

    add(sub, "status", "status", "what the running daemon is doing, and what to do about it")
    add(sub, "sync", "sync", "run one sync round now and report it")
    dlq = sub.add_parser("dlq", help="dead FDs: list them, send them again")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    listing = add(dlq_sub, "list", "dlq_list", "list dead FDs with the reason")
    listing.add_argument("--limit", type=_positive, default=10_000, help="at most this many")
    retry = add(dlq_sub, "retry", "dlq_retry", "make dead FDs pending again (FN FD, or --all)")
    retry.add_argument("fn", nargs="?", type=_fn, help="FN number")
    retry.add_argument("fd", nargs="?", type=_fd, help="FD number")
    retry.add_argument("--all", action="store_true", help="every dead FD")
    retry.set_defaults(check=_check_retry(retry))
    doc = add(sub, "doc", "doc", "one journaled FD, decoded")
    doc.add_argument("fn", type=_fn, help="FN number")
    doc.add_argument("fd", type=_fd, help="FD number")
    export = add(
        sub, "export", "export", "stream journaled FDs as JSON lines or CSV", json_output=False
    )
    export.add_argument("--since", type=_since, required=True, help="a date: 2024-05-01")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    add(sub, "fleet", "fleet", "every live kktd instance sharing this Redis")
    skipper = add(
        sub,
        "skip",
        "skip",
        "last resort: skip the FD kktd is stuck on, which the KKT can never produce (audited)",
    )
    skipper.add_argument("fn", type=_full_fn, help="FN number")
    skipper.add_argument("fd", type=_fd, help="FD number: the one `kktd status` says is stuck")
    skipper.add_argument(
        "--reason", type=_reason, required=True, help="why, kept in the journal with your name"
    )


def _check_retry(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], None]:
    def check(args: argparse.Namespace) -> None:
        if args.all == (args.fn is not None):
            parser.error("give either FN FD or --all")
        if args.fn is not None and args.fd is None:
            parser.error("give the FD number after the FN")

    return check
