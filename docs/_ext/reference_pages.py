"""Build-time reference pages: the command-line reference and the module map, written from the code.

Why a small generator here rather than sphinx-argparse: our parsers are assembled by
``sctranslator.cli.entry.build_parser`` from the typed option groups of ``sctranslator.options``
(nested ``export onnx|triton`` sub-commands included), and the page must say exactly what
``sctranslator COMMAND --help`` says, in the site's own MyST markup, with every flag greppable by the
tests. Walking argparse's public-enough structures takes ~60 lines and no extra dependency, and the
same function is what ``tests/test_cli.py`` checks against the parsers. The module map is generated
for the same reason: the package layout moves (issue 18), and a hand-kept table drifts; the layers
come from ``pyproject.toml``'s ``[tool.importlinter]`` contract and each module's job from the first
paragraph of its docstring.

Both pages are written into ``docs/_generated/`` (git-ignored, excluded as sources) when the builder
starts, and included by ``cli.md`` and ``architecture.md``. A page is rewritten only when its text
changed, so an unchanged tree does not trigger a rebuild.
"""

from __future__ import annotations

import argparse
import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "docs" / "_generated"

# CommonMark backslash-escapes any ASCII punctuation; these are the ones MyST would otherwise read as
# markup in help texts ($ too: dollarmath is on).
_MARKUP = re.compile(r"([\\`*_\[\]<>$~|{}#])")


def _escape(text: str) -> str:
    return _MARKUP.sub(r"\\\1", text)


def commands(parser: argparse.ArgumentParser, prefix: str = "sctranslator"
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every leaf sub-command of ``parser`` with its full name.

    Parameters
    ----------
    parser
        The top-level parser (``sctranslator.cli.entry.build_parser()``).
    prefix
        The command name so far.

    Returns
    -------
    Iterator of (``"sctranslator translate"``, its parser), in the order the parser declares them;
    a command with sub-commands of its own (``export``) yields those instead.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if nested:
                    yield from commands(sub, f"{prefix} {name}")
                else:
                    yield f"{prefix} {name}", sub


def _option_line(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    name = ", ".join(action.option_strings) or (action.metavar or action.dest.upper())
    if action.option_strings and action.nargs != 0:
        metavar = action.metavar or action.dest.upper()
        name += f" {' '.join(metavar) if isinstance(metavar, tuple) else metavar}"
    helptext = re.sub(r"\s+", " ", parser._get_formatter()._expand_help(action) if action.help else "")
    required = "**required**; " if action.required and action.option_strings else ""
    return f"- `{name}`: {required}{_escape(helptext)}"


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """The command-line reference page: every sub-command, its usage and every option's help.

    Parameters
    ----------
    parser
        The ``sctranslator`` parser, as the command line builds it.

    Returns
    -------
    str
        MyST Markdown: one ``## `sctranslator COMMAND` `` section per leaf command, its description,
        its usage line and one list item per argument (flags in code, help text escaped).
    """
    sections = []
    for command, sub in commands(parser):
        usage = re.sub(r"\s+", " ", sub.format_usage().removeprefix("usage: ")).strip()
        lines = [_option_line(sub, a) for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        sections.append(f"## `{command}`\n\n{_escape(sub.description or '')}\n\n```text\n{usage}\n```\n\n"
                        + "\n".join(lines) + "\n")
    return "\n".join(sections)


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    # Docstrings mark code with backticks, which MyST renders as code too; only the table's own
    # separator needs escaping.
    return re.sub(r"\s+", " ", doc.strip().split("\n\n")[0]).replace("|", "\\|")


def _layers(pyproject: Path) -> list[list[str]]:
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["type"] == "layers":
            return [[m.strip() for m in layer.split("|")] for layer in contract["layers"]]
    raise ValueError(f"{pyproject} declares no import-linter layers contract")


def module_map(package: Path, pyproject: Path) -> str:
    """The module map: the import-linter layers, top to bottom, and each module's job.

    Parameters
    ----------
    package
        The package directory (``sctranslator/``).
    pyproject
        ``pyproject.toml``, whose ``[tool.importlinter]`` layers contract orders the map.

    Returns
    -------
    str
        MyST Markdown: one table per layer (``module | job``), the job being the first paragraph of the
        module's docstring; modules under no layer are listed last.
    """
    root = package.name
    modules = sorted(p for p in package.rglob("*.py") if "data" not in p.relative_to(package).parts)

    def dotted(path: Path) -> str:
        parts = path.relative_to(package.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    placed: set[Path] = set()
    sections = []
    for number, layer in enumerate(_layers(pyproject), 1):
        rows = []
        for name in layer:
            mine = [p for p in modules if dotted(p) == name or dotted(p).startswith(name + ".")]
            placed.update(mine)
            rows += [f"| `{dotted(p)}` | {_summary(p)} |" for p in mine]
        title = " \\| ".join(f"`{n.removeprefix(root + '.')}`" for n in layer)
        sections.append(f"### Layer {number}: {title}\n\n| module | job |\n| --- | --- |\n" + "\n".join(rows) + "\n")
    rest = [p for p in modules if p not in placed]
    if rest:
        sections.append("### Outside the layers (the package's face)\n\n| module | job |\n| --- | --- |\n"
                        + "\n".join(f"| `{dotted(p)}` | {_summary(p)} |" for p in rest) + "\n")
    return "\n".join(sections)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def write_pages(app: object = None) -> None:
    """Write ``docs/_generated/cli.md`` and ``docs/_generated/modules.md`` from the code (``builder-inited``)."""
    from sctranslator.cli.entry import build_parser

    _write_if_changed(GENERATED / "cli.md", cli_reference(build_parser()))
    _write_if_changed(GENERATED / "modules.md", module_map(ROOT / "sctranslator", ROOT / "pyproject.toml"))


def setup(app):  # noqa: ANN001, ANN201 - Sphinx's extension entry point
    app.connect("builder-inited", write_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
