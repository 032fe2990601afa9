"""The ``neuralsort`` command: one sub-command per experiment.

Registering an experiment is one line in :data:`COMMANDS`: a module exposing
``add_parser(subparsers)`` (adds its sub-parser(s), normally with
:func:`neuralsort.experiments.config.add_common_args`) and ``main(args) -> int | None``.

A :class:`~neuralsort.experiments.config.UserError` raised by a command is printed as one line,
``neuralsort <command>: error: <message>``, and the process exits with status 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from .config import UserError

__all__ = ["COMMANDS", "build_parser", "main"]

# One module per experiment; each exposes add_parser(subparsers) and main(args).
COMMANDS: list[str] = [
    "neuralsort.experiments.dknn.command",
    "neuralsort.experiments.baseline.command",
    "neuralsort.experiments.multidigit.sort",
    "neuralsort.experiments.multidigit.quantile",
    "neuralsort.experiments.tables.reproduce",
    "neuralsort.experiments.tables.report",
    "neuralsort.experiments.info",
]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("neuralsort")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """Every parser of the command, sub-commands included (argparse makes them of the top
    parser's class): a flag is spelt in full (``--num_epoch`` is an error, not ``--num_epochs``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


class _OneLinePerCommand(argparse.HelpFormatter):
    """`neuralsort --help` lists each sub-command on one line, its help beside its name."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=16, width=max(100, shutil.get_terminal_size()[0]))
        self._action_max_length = 14  # room for the longest name, "reproduce", indented


class _MetavarOnce(argparse.HelpFormatter):
    """A sub-command's help names each flag's spellings, then its value once:
    ``--num_epochs, --num-epochs N`` (argparse repeats the value after every spelling)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Paragraphs are filled to the width; lines indented by two spaces (a list in an
        epilog) are kept as they are."""
        out: list[str] = []
        paragraph: list[str] = []
        for line in [*text.splitlines(), ""]:
            if line.strip() and not line.startswith("  "):
                paragraph.append(line.strip())
                continue
            if paragraph:
                out.append(super()._fill_text(" ".join(paragraph), width, indent))
                paragraph.clear()
            if line.strip():
                out.append(indent + line)
        return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = _Parser(
        prog="neuralsort",
        description="Differentiable sorting (NeuralSort): the paper's experiments.",
        formatter_class=_OneLinePerCommand,
    )
    parser.add_argument("--version", action="version", version=f"neuralsort {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(name)
        before = set(sub.choices)
        module.add_parser(sub)
        for cmd in set(sub.choices) - before:
            sub.choices[cmd].set_defaults(func=module.main, command=cmd)
            sub.choices[cmd].formatter_class = _MetavarOnce
    return parser


def _sub_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The parser of sub-command ``command`` (``parser`` itself for None)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _unknown_flags(parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    """Exit with ``parser``'s usage and the arguments it does not know, naming close flags."""
    spellings = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = []
    for arg in unknown:
        if arg.startswith("--"):
            close += difflib.get_close_matches(arg.split("=", 1)[0], spellings, n=1, cutoff=0.75)
    hint = f" (did you mean {' or '.join(dict.fromkeys(close))}?)" if close else ""
    parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``neuralsort`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(argv) if argv is not None else None)
    if unknown:  # with the usage of the sub-command they were given to
        _unknown_flags(_sub_parser(parser, getattr(args, "command", None)), unknown)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    import torch  # noqa: PLC0415 - not needed for --help

    # Flush subnormal floats to zero while a command runs: late in training, Adam's second-moment
    # estimates of tiny gradients become subnormal (over a third of them in a 16,000-step sort
    # run), and CPU arithmetic on subnormals is many times slower; values below 1.2e-38 do not
    # matter to training. Restored on return (in-process callers such as tests keep the default).
    torch.set_flush_denormal(True)
    try:
        status = args.func(args)
    except UserError as exc:
        print(f"neuralsort {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"neuralsort {args.command}: interrupted; continue with the same command plus "
            "--resume (and --out DIR)",
            file=sys.stderr,
        )
        return 130
    finally:
        torch.set_flush_denormal(False)
    return int(status or 0)


def entry_point() -> int:
    """The ``neuralsort`` script: :func:`main`, then leave the process group after a success.

    Under torchrun every process runs this; a process that returns 0 waits for the others and
    destroys its process group before the interpreter exits (see :func:`distributed.shutdown`).
    In-process callers of :func:`main` keep the group, so several commands can share it.
    """
    status = main()
    if status == 0 and "torch.distributed" in sys.modules:
        from . import distributed  # noqa: PLC0415 - only needed once torch is imported

        distributed.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(entry_point())
