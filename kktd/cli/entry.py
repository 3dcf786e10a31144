"""The ``kktd`` command (SPEC section 6): its parser, and the commands that need no daemon.

`kktd run` loads the daemon and nothing of the client commands; those (`kktd status` …) are
declared here by their arguments only (`kktd.cli.args`) and loaded when one of them runs. The
exit codes are `kktd.cli.exits`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from kktd import __version__
from kktd.cli.args import register as register_client_commands
from kktd.cli.exits import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from kktd.config import DEFAULT_PATH, Config, ConfigError, load_config, render_config
from kktd.kkt.address import describe, parse_address

Handler = Callable[[argparse.Namespace], int]


def default_config_path() -> Path:
    """``$KKTD_CONFIG`` when set (the demo and tests use it), else /etc/kktd/kktd.toml."""
    return Path(os.environ.get("KKTD_CONFIG") or DEFAULT_PATH)


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    kkt = describe(parse_address(config.kkt.port), config.kkt.baudrate)
    print(f"{args.config}: ok (the KKT: {kkt})")
    return EXIT_OK


def cmd_print_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    print(render_config(config), end="")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    # Imported here: the daemon pulls in every component, which the other commands do not need.
    from kktd.lifecycle.components import instance_id  # noqa: PLC0415
    from kktd.lifecycle.daemon import Daemon  # noqa: PLC0415
    from kktd.lifecycle.log import configure_logging  # noqa: PLC0415
    from kktd.lifecycle.systemd import Notifier  # noqa: PLC0415

    configure_logging(config.log.level, config.log.format)
    for warning in config.warnings:
        structlog.get_logger("kktd.config").warning("config.warning", detail=warning)
    environ = dict(os.environ)
    daemon = Daemon(
        args.config,
        config,
        instance=instance_id(environ),
        notifier=Notifier.from_environ(environ),
        environ=environ,
    )
    return asyncio.run(daemon.run())


def run_emulator(argv: list[str]) -> int:
    from kktd.testbed.emulator.__main__ import main as emulator_main  # noqa: PLC0415

    return emulator_main(argv)


def run_mock_upstream(argv: list[str]) -> int:
    from kktd.testbed.mock_upstream.__main__ import main as mock_main  # noqa: PLC0415

    mock_main(argv)
    return EXIT_OK


# Tools with their own argument parsers: everything after the name is theirs (argparse's
# REMAINDER cannot take a leading option such as --help, so they are dispatched before it).
TOOLS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "emulator": (run_emulator, "run the built-in Shtrih-M KKT emulator (pty or TCP)"),
    "mock-upstream": (run_mock_upstream, "run the mock receipt collector"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kktd",
        description="Companion daemon for a Shtrih-M fiscal register: journal and deliver FDs.",
    )
    parser.add_argument("--version", action="version", version=f"kktd {__version__}")
    config_opt = argparse.ArgumentParser(add_help=False)
    config_opt.add_argument(
        "--config",
        type=Path,
        default=default_config_path(),
        help=f"config file (default: $KKTD_CONFIG or {DEFAULT_PATH})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[config_opt], help=help_text)
        command.set_defaults(handler=handler)
        return command

    add("run", cmd_run, "run the daemon in the foreground")
    add("check-config", cmd_check_config, "validate the config file; exit 0 or 78")
    add("print-config", cmd_print_config, "print the effective config, secrets redacted")
    for name, (_, help_text) in TOOLS.items():
        sub.add_parser(name, help=f"{help_text} (see kktd {name} --help)", add_help=False)
    register_client_commands(sub, config_opt)  # status, sync, dlq, doc, export, fleet, skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in TOOLS:
        return TOOLS[args_list[0]][0](args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_FAILURE
