"""Print the README's command-line reference (every option of every sub-command) from the parsers.

Run `python scripts/cli_reference.py` and paste its output between the README's
`<!-- cli-reference -->` markers; tests/test_cli.py checks that every option is listed there.
"""

from __future__ import annotations

import argparse
import re

from sctranslator.cli.entry import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: str = "sctranslator"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if nested:
                    yield from _commands(sub, f"{prefix} {name}")
                else:
                    yield f"{prefix} {name}", sub


def _line(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    name = ", ".join(action.option_strings) or action.dest.upper()
    if action.option_strings and action.nargs != 0:
        name += " " + (action.metavar or action.dest.upper())
    text = re.sub(r"\s+", " ", parser._get_formatter()._expand_help(action))
    required = " **required**;" if getattr(action, "required", False) and action.option_strings else ""
    return f"- `{name}`:{required} {text}"


def reference() -> str:
    blocks = []
    for command, parser in _commands(build_parser()):
        lines = [_line(parser, a) for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        blocks.append(f"<details><summary><code>{command}</code>: {parser.description}</summary>\n\n"
                      + "\n".join(lines) + "\n\n</details>")
    return "\n\n".join(blocks)


if __name__ == "__main__":
    print(reference())
