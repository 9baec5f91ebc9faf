"""The `ov2` command. Subcommands live in openvision2/commands/, one file each.

Building the parser imports no torch: command modules import heavy modules inside run(), so help
and argument errors return at once.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import UserError, one_line
from .logs import setup_logging


class HelpFormatter(argparse.HelpFormatter):
    """Appends each flag's default to its help, unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if (not unset and "default" not in text
                and (action.option_strings or action.nargs in ("?", "*"))):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """Every parser, subcommands' included (add_subparsers builds them with this class), shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ov2", description="OpenVision 2: caption-only pretraining of ViT encoders.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, not a command
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        # a command with HIDDEN = True is an old name kept working, left out of the command list
        listed = {} if getattr(module, "HIDDEN", False) else {"help": module.HELP}
        command = sub.add_parser(module.NAME, description=module.HELP, **listed)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.command)
    try:
        return args.run(args) or 0
    except UserError as err:
        print(f"ov2 {args.command}: error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"ov2 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
