"""The ``refnas`` command line: ``refnas demo | train | search | bench | verify``.

Each sub-command lives with the code it drives; this module only dispatches, importing a
sub-command's module when it is used (so ``refnas verify`` does not import matplotlib).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module providing add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS = {
    "demo": ("refnas.demo:demo", "train on the bundled digits and write a summary, plot, checkpoint"),
    "train": ("refnas.demo:train", "train a model on a data set"),
    "search": ("refnas.search.cli", "run a hyperparameter search from a TOML config"),
    "bench": ("benchmarks.__main__", "run the benchmark suite"),
    "verify": ("refnas.verify", "gradcheck every registered op to first and second order"),
}


def _load(target: str):
    """``module`` or ``module:prefix`` -> (add_arguments, run)."""
    module_name, _, prefix = target.partition(":")
    module = importlib.import_module(module_name)
    if prefix:
        return getattr(module, f"add_{prefix}_arguments"), getattr(module, f"run_{prefix}")
    return module.add_arguments, module.run


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refnas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (target, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            add_arguments, run = _load(target)
            add_arguments(command)
            command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
