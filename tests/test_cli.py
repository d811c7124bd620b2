"""The command line: every option documented with its default and choices; options shared with the API."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from datafiles import PBMC, data_file

from sctranslator import options
from sctranslator.cli.entry import build_parser, main
from sctranslator.errors import OptionError

DEMO_MODEL = Path(__file__).resolve().parents[1] / "sctranslator" / "data" / "demo" / "model"


def _parsers(parser: argparse.ArgumentParser, prefix: str = "sctranslator"):
    """(command path, parser) for the top-level parser and every sub-command, recursively."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}")


def _expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action)


def _actions():
    for where, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            yield where, parser, action


def test_the_walk_reaches_every_command() -> None:
    names = {where for where, _ in _parsers(build_parser())}
    for command in ("translate", "vocab", "convert", "evaluate", "knockout", "attention", "finetune", "demo",
                    "serve", "export onnx", "export triton"):
        assert f"sctranslator {command}" in names


@pytest.mark.parametrize("where,parser,action", list(_actions()),
                         ids=lambda x: x if isinstance(x, str) else "")
def test_every_option_states_its_default_and_choices(where: str, parser: argparse.ArgumentParser,
                                                      action: argparse.Action) -> None:
    label = f"{where} {'/'.join(action.option_strings) or action.dest}"
    assert action.help and action.help.strip(), f"{label} has no help"
    text = _expanded_help(parser, action)
    is_flag = action.nargs == 0  # store_true / store_false: the flag itself is the non-default
    if not is_flag and action.default not in (None, False, [], ()):
        assert str(action.default) in text, f"{label}: help does not state its default {action.default!r}: {text}"
    if action.choices:
        for choice in action.choices:
            assert str(choice) in text, f"{label}: help does not list the choice {choice!r}: {text}"


def test_min_coverage_help_states_fifty_percent() -> None:
    parser = build_parser()
    translate = dict(_parsers(parser))["sctranslator translate"]
    action = next(a for a in translate._actions if "--min-coverage" in a.option_strings)
    text = _expanded_help(translate, action)
    assert "0.5" in text and "50%" in text


def test_choice_tuples_come_from_the_literals() -> None:
    from sctranslator.engine.backends import BACKENDS
    from sctranslator.kernels import NORMALIZE_MODES, TARGET_SCALINGS
    from sctranslator.train.presets import PRESETS
    from sctranslator.vocab import ID_TYPES

    assert NORMALIZE_MODES is options.NORMALIZE_MODES == typing.get_args(options.Normalize)
    assert TARGET_SCALINGS is options.TARGET_SCALINGS
    assert BACKENDS is options.BACKENDS
    assert ("auto", *ID_TYPES) == options.ID_TYPES
    assert tuple(PRESETS) == options.PRESETS


def test_cli_choices_are_the_declared_ones() -> None:
    translate = dict(_parsers(build_parser()))["sctranslator translate"]
    choices = {a.dest: tuple(a.choices) for a in translate._actions if a.choices}
    assert choices["backend"] == options.BACKENDS
    assert choices["precision"] == options.PRECISIONS
    assert choices["normalize"] == options.NORMALIZE_MODES
    assert choices["id_type"] == options.ID_TYPES
    assert choices["protocol"] == options.TRITON_PROTOCOLS


def test_input_options_are_offered_where_the_api_takes_them() -> None:
    parsers = dict(_parsers(build_parser()))
    translate_flags = {s for a in parsers["sctranslator translate"]._actions for s in a.option_strings}
    assert {"--allow-empty-cells", "--use-raw", "--modality", "--missing-chunks", "--gene-mapping"} <= translate_flags
    for command in ("knockout", "attention"):
        flags = {s for a in parsers[f"sctranslator {command}"]._actions for s in a.option_strings}
        assert {"--gene-mapping", "--allow-empty-cells", "--use-raw", "--modality", "--missing-chunks"} <= flags
        assert {"--max-cells", "--cells", "--obs-query"} <= flags  # they choose cells as translate does
        assert "--obs-columns" not in flags  # only translate writes obs
    assert options.InputOptions().missing_chunks == "error"
    assert options.InputOptions().gene_mapping is None


def test_from_cli_args_round_trips_a_group() -> None:
    parser = argparse.ArgumentParser()
    options.EngineOptions.add_cli_args(parser)
    parsed = parser.parse_args(["--backend", "onnxruntime", "--batch-size", "4", "--onnx", "m.onnx"])
    engine = options.EngineOptions.from_cli_args(parsed)
    assert (engine.backend, engine.batch_size, engine.onnx_path, engine.device) == ("onnxruntime", 4, "m.onnx", "cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "int8"])


def test_a_bad_choice_is_a_named_error_listing_the_choices() -> None:
    with pytest.raises(OptionError,
                       match="unknown backend 'tensorflow'; choose one of auto, torch, onnxruntime, triton"):
        options.check_choices(backend="tensorflow")
    with pytest.raises(OptionError, match="total_log1p"):  # a group checks its fields the same way
        options.InputOptions(normalize="total-log1p").check()
    options.check_choices(normalize=None, id_type="ensembl")  # None = the model's own setting


@pytest.mark.parametrize("call", ["translate", "knockout", "interactions", "evaluate", "finetune"])
def test_api_functions_refuse_a_bad_choice_before_reading_anything(call: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.h5ad"  # never opened: the option check comes first
    if call == "translate":
        from sctranslator import translate
        run = lambda: translate(missing, DEMO_MODEL, normalize="cpm")  # noqa: E731
    elif call == "knockout":
        from sctranslator.analysis.knockout import knockout
        run = lambda: knockout(missing, DEMO_MODEL, ["CD4"], out=tmp_path / "k.h5ad", id_type="hgnc")  # noqa: E731
    elif call == "interactions":
        from sctranslator.analysis.attention import interactions
        run = lambda: interactions(missing, DEMO_MODEL, normalize="cpm")  # noqa: E731
    elif call == "evaluate":
        from sctranslator.analysis.evaluate import evaluate
        run = lambda: evaluate(missing, missing, scaling="zscore")  # noqa: E731
    else:
        from sctranslator.train import finetune
        run = lambda: finetune(missing, init=DEMO_MODEL, out=tmp_path / "b", steps=1, decay="step")  # noqa: E731
    with pytest.raises(OptionError, match="choose one of"):
        run()


def test_presets_need_no_dummy_arguments() -> None:
    from sctranslator.errors import CheckpointError
    from sctranslator.train.presets import preset_config

    published = preset_config("published")
    assert (published.max_genes, published.max_proteins) == (20_000, 1_000)
    assert preset_config("tiny", n_genes=30, n_proteins=5).max_genes == 30
    with pytest.raises(CheckpointError, match="n_genes and n_proteins"):
        preset_config("tiny")
    with pytest.raises(CheckpointError, match="choose one of published, small, tiny"):
        preset_config("huge")


def test_options_import_is_light() -> None:
    code = ("import sys, sctranslator.options, sctranslator.cli.entry; "
            "heavy = [m for m in ('torch', 'anndata', 'numba', 'onnx') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_export_onnx_takes_out_as_an_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    out = tmp_path / "model.onnx"
    assert main(["export", "onnx", str(DEMO_MODEL), "--out", str(out)]) == 0
    assert "max abs error" in capsys.readouterr().out
    graph = onnx.load(str(out))
    assert [i.name for i in graph.graph.input] == ["values", "gene_ids", "gene_mask", "token_counts",
                                                   "token_positions"]
    decoder = onnx.load(str(tmp_path / "model.decoder.onnx"))  # the decoder graph beside it
    assert [i.name for i in decoder.graph.input] == ["translated", "protein_ids", "protein_mask"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.decoder.onnx", "model.onnx"]


def test_export_onnx_needs_one_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "onnx", str(DEMO_MODEL)]) == 2
    assert "--out FILE.onnx" in capsys.readouterr().err
    assert main(["export", "onnx", str(DEMO_MODEL), str(tmp_path / "a.onnx"), "--out", str(tmp_path / "b.onnx")]) == 2
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def _reference_pages():
    """docs/_ext/reference_pages.py, the generator `make docs` runs (docs/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "docs" / "_ext" / "reference_pages.py"
    spec = importlib.util.spec_from_file_location("reference_pages", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_page_lists_every_command_option_and_help() -> None:
    """The site's CLI reference, generated from the parsers, has every leaf command, flag and help text."""
    root = Path(__file__).resolve().parents[1]
    assert "_generated/cli.md" in (root / "docs" / "cli.md").read_text()  # the page includes what is generated
    page = _reference_pages().cli_reference(build_parser())
    plain = re.sub(r"\\(.)", r"\1", page)  # the page escapes markup characters in help texts
    leaves = {where for where, parser in _parsers(build_parser())
              if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)}
    assert {"sctranslator translate", "sctranslator export onnx", "sctranslator serve"} <= leaves
    for where, parser, action in _actions():
        if where not in leaves:
            continue
        section = plain[plain.index(f"## `{where}`\n"):]
        end = section.find("\n## `", 1)
        section = section if end < 0 else section[:end]
        for flag in action.option_strings:
            assert f"`{flag}" in section or f", {flag}" in section, f"the CLI reference lacks {where} {flag}"
        if action.help and action.help != argparse.SUPPRESS:
            assert re.sub(r"\s+", " ", _expanded_help(parser, action)) in section, f"{where} {action.dest}: help"


_STATED_DEFAULT = re.compile(r"default:\s*([^;)]*)")


def _settings():
    """Every option a user sets (not --help / --version, not required ones, positionals only when optional)."""
    for where, parser, action in _actions():
        if action.default == argparse.SUPPRESS or action.required:
            continue
        if not action.option_strings and action.nargs not in ("?", "*"):
            continue
        yield where, parser, action


@pytest.mark.parametrize("where,parser,action", list(_settings()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_stated_default_is_the_real_one(where: str, parser: argparse.ArgumentParser,
                                              action: argparse.Action) -> None:
    label = f"{where} {'/'.join(action.option_strings) or action.dest}"
    text = re.sub(r"\s+", " ", _expanded_help(parser, action))
    stated = _STATED_DEFAULT.findall(text)
    assert stated, f"{label}: help states no default: {text}"
    said = stated[-1].strip()
    if action.nargs == 0:  # a flag: "on" only if leaving it out already gives what giving it gives
        real = "on" if action.const is not None and action.default == action.const else "off"
        assert said == real, f"{label}: help says default {said!r}, argparse's default means {real!r}"
    elif action.default in (None, [], ()):
        # an unset option may describe what happens; it must not claim a value it does not have
        literal = (said in ("on", "off") or said in (action.choices or ())
                   or re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", said))
        assert not literal, f"{label}: help says default {said!r}, argparse's default is {action.default!r}"
    else:
        assert said == str(action.default), f"{label}: help says default {said!r}, argparse's is {action.default!r}"


def test_negative_flags_say_off_in_the_printed_help() -> None:
    """The real --help output: `--no-plots` (a store_false flag) is off unless given."""
    out = subprocess.run([sys.executable, "-m", "sctranslator", "evaluate", "--help"], capture_output=True, text=True,
                         check=True).stdout
    flat = re.sub(r"\s+", " ", out)
    assert re.search(r"--no-plots write report\.json only, no figures \(default: off\)", flat), flat
    args = build_parser().parse_args(["evaluate", "--pred", "p", "--truth", "t"])
    assert args.plots is True


def test_a_declared_negative_flag_cannot_be_given_the_opposite_default() -> None:
    parser = argparse.ArgumentParser()
    with pytest.raises(ValueError, match="--no-plots"):
        options.EvaluateOptions.add_cli_args(parser, only=("plots",), defaults={"plots": False})


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sctranslator {importlib.metadata.version('sctranslator')}"


@pytest.fixture
def _restore_logging():
    root = logging.getLogger()
    saved = root.level, list(root.handlers), logging.getLogger("sctranslator").level
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    logging.getLogger("sctranslator").setLevel(saved[2])


@pytest.mark.parametrize("argv,ours,libraries", [
    (["models"], logging.INFO, logging.WARNING),
    (["-v", "models"], logging.DEBUG, logging.WARNING),
    (["models", "-v"], logging.DEBUG, logging.WARNING),
    (["models", "-vv"], logging.DEBUG, logging.DEBUG),
    (["-v", "models", "-v"], logging.DEBUG, logging.DEBUG),
    (["export", "onnx", "-v", "--help"], None, None),
])
def test_verbose_before_or_after_the_command_raises_our_loggers_only(
        argv: list[str], ours: int | None, libraries: int | None, _restore_logging: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    if ours is None:  # a nested sub-command accepts -v as well
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        return
    assert main(argv) == 0
    assert logging.getLogger("sctranslator.engine.pipeline").getEffectiveLevel() == ours
    for name in ("zarr", "numcodecs", "fsspec", "asyncio", "urllib3", "numba"):
        assert logging.getLogger(name).getEffectiveLevel() == libraries, name


def test_verbose_after_the_command_logs_our_debug_lines_and_no_zarr_chatter(tmp_path: Path) -> None:
    """A real run: `translate ... -v` prints sctranslator DEBUG records and no DEBUG records of libraries."""
    out = tmp_path / "pred.zarr"
    result = subprocess.run([sys.executable, "-m", "sctranslator", "translate", str(data_file(PBMC / "rna.h5ad")),
                             "--model", "demo", "--out", str(out), "--max-cells", "8", "--quiet", "-v"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    debug = [line for line in result.stderr.splitlines() if line.startswith("DEBUG ")]
    assert any(line.startswith("DEBUG sctranslator") for line in debug), result.stderr
    assert all(line.startswith("DEBUG sctranslator") for line in debug), debug
