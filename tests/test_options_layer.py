"""The options layer: translate's options object is built once (from keywords or the command line) and
checked once, bad values give the same named error on both paths, and what a backend may do comes from
the capabilities its class declares, never from its name."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import anndata as ad
import pytest

import sctranslator
from sctranslator import cli
from sctranslator.engine.backends import OnnxRuntimeBackend, TorchBackend, TritonBackend
from sctranslator.engine.backends.capabilities import BackendCapabilities
from sctranslator.engine.backends.selection import BACKENDS, all_capabilities, backend_capabilities
from sctranslator.engine.backends.triton_backend import TritonConnection as TritonClientOptions
from sctranslator.errors import BackendError, BackendOptionError, InputDataError, OptionError, StoreError
from sctranslator.options import TranslateOptions

PROTEINS = ["CD3", "CD4", "CD8a", "CD14"]


@pytest.fixture(scope="module")
def rna_path(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rna") / "rna.h5ad"
    ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")[:24].copy().write_h5ad(path)
    return path


def test_keywords_and_command_line_build_the_same_options(tmp_path: Path) -> None:
    names = tmp_path / "cells.txt"
    names.write_text("c1\nc2\n")
    argv = ["translate", "in.h5ad", "--model", "demo", "--out", "o.zarr", "--proteins", "CD3,CD4", "--backend",
            "triton", "--url", "127.0.0.1:8001", "--protocol", "http", "--batch-size", "4", "--cells", f"@{names}",
            "--normalize", "log1p", "--embeddings", "--quiet", "--wait"]
    from_cli = TranslateOptions.from_cli_args(cli.build_parser().parse_args(argv))
    from_python = TranslateOptions.from_kwargs(
        proteins=["CD3", "CD4"], out="o.zarr", backend="triton", batch_size=4, cells=("c1", "c2"),
        normalize="log1p", embeddings=True, quiet=True, wait=True,
        backend_options={"url": "127.0.0.1:8001", "protocol": "http"})
    assert from_cli == from_python
    assert from_python.engine.batch_size == 4 and from_python.input.cells == ("c1", "c2")
    assert from_python.output.embeddings and from_python.backend_options["protocol"] == "http"
    # every keyword of translate() has a home in the options object, and nothing else is taken
    keywords = set(inspect.signature(sctranslator.translate).parameters) - {"data", "model"}
    built = TranslateOptions.from_kwargs(**{name: None for name in keywords})
    assert built.proteins is None and built.engine.backend is None
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        TranslateOptions.from_kwargs(batchsize=4)


def test_the_options_object_is_checked_once_per_run(rna_path: Path, fixtures_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[TranslateOptions] = []
    real_check = TranslateOptions.check

    def counting_check(self: TranslateOptions) -> None:  # counts, then runs the real check
        checked.append(self)
        real_check(self)

    monkeypatch.setattr(TranslateOptions, "check", counting_check)
    model = fixtures_dir / "tiny_a_official.pt"
    sctranslator.translate(rna_path, model, PROTEINS, out=tmp_path / "py.zarr", allow_empty_cells=True, quiet=True)
    assert len(checked) == 1
    argv = ["translate", str(rna_path), "--model", str(model), "--proteins", ",".join(PROTEINS), "--out",
            str(tmp_path / "cli.zarr"), "--allow-empty-cells", "--quiet"]
    assert cli.main(argv) == 0
    assert len(checked) == 2
    assert checked[0].engine == checked[1].engine and checked[0].input == checked[1].input


# (translate keywords, the same on the command line, the named error, its message)
BAD_VALUES = [
    ({"device": "gpu"}, ["--device", "gpu"], OptionError, r"unknown device 'gpu'"),
    ({"batch_size": 0}, ["--batch-size", "0"], OptionError, r"--batch-size must be >= 1, got 0:"),
    ({"max_cells": 3, "write_h5ad": "w.h5ad"}, ["--max-cells", "3", "--write-h5ad", "w.h5ad"], InputDataError,
     r"a cell selection .* cannot be combined with --write-h5ad"),
    ({"backend": "onnxruntime", "compile": True}, ["--backend", "onnxruntime", "--compile"], BackendOptionError,
     r"--compile applies to --backend torch, not onnxruntime"),
    ({"backend": "triton", "precision": "fp16", "backend_options": {"url": "127.0.0.1:1"}},
     ["--backend", "triton", "--precision", "fp16", "--url", "127.0.0.1:1"], BackendOptionError,
     r"--precision fp16 applies to --backend torch or onnxruntime, not triton"),
    ({"backend": "triton"}, ["--backend", "triton"], BackendOptionError, r"--backend triton needs --url"),
    ({"backend": "onnxruntime", "embeddings": True}, ["--backend", "onnxruntime", "--embeddings"], BackendError,
     r"the onnxruntime backend cannot return cell embeddings.*--backend torch"),
    ({"backend": "onnxruntime", "precision": "bf16"}, ["--backend", "onnxruntime", "--precision", "bf16"],
     BackendError, r"the onnxruntime backend has no bf16 kernels on CPU; use --precision fp32 or fp16 with "
                   r"onnxruntime on CPU, --backend torch --precision bf16, or --device cuda"),
]


@pytest.mark.parametrize(("keywords", "flags", "error", "message"), BAD_VALUES,
                         ids=[case[3][:32] for case in BAD_VALUES])
def test_a_bad_value_gives_the_same_named_error_from_python_and_the_command_line(
        rna_path: Path, fixtures_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        keywords: dict, flags: list[str], error: type[Exception], message: str) -> None:
    model = fixtures_dir / "tiny_a_official.pt"
    writeback = str(tmp_path / "w.h5ad")  # a write-back path of this test's own
    keywords = {name: writeback if value == "w.h5ad" else value for name, value in keywords.items()}
    flags = [writeback if flag == "w.h5ad" else flag for flag in flags]
    with pytest.raises(error, match=message) as raised:
        sctranslator.translate(rna_path, model, PROTEINS, out=tmp_path / "py.zarr", quiet=True, **keywords)
    assert type(raised.value) is error
    capsys.readouterr()
    out = tmp_path / "cli.zarr"
    assert cli.main(["translate", str(rna_path), "--model", str(model), "--out", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {error.__name__}: "), err
    assert re.search(message, err[0])
    # refused before anything was written
    assert not (tmp_path / "py.zarr").exists() and not out.exists() and not (tmp_path / "w.h5ad").exists()


def test_an_hdf5_out_is_refused_with_the_same_error_on_both_paths(rna_path: Path, fixtures_dir: Path,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model = fixtures_dir / "tiny_a_official.pt"
    with pytest.raises(StoreError, match="not an HDF5 file"):
        sctranslator.translate(rna_path, model, PROTEINS, out=tmp_path / "p.h5ad")
    assert cli.main(["translate", str(rna_path), "--model", str(model), "--out", str(tmp_path / "p.h5ad")]) == 2
    assert "error: StoreError: --out" in capsys.readouterr().err
    assert not (tmp_path / "p.h5ad").exists()


def test_every_backend_class_declares_its_capabilities() -> None:
    pytest.importorskip("tritonclient.grpc", reason="the triton extra is not installed")
    declared = all_capabilities()
    assert set(declared) == set(BACKENDS) - {"auto"}
    for kind, cls in (("torch", TorchBackend), ("onnxruntime", OnnxRuntimeBackend), ("triton", TritonBackend)):
        assert isinstance(cls.capabilities, BackendCapabilities)
        assert declared[kind] is cls.capabilities is backend_capabilities(kind)
        assert cls.supports_embeddings == cls.capabilities.embeddings
    # triton takes exactly the options its client reads
    assert set(TritonBackend.capabilities.options) == {f.name for f in dataclasses.fields(TritonClientOptions)}
    assert TritonBackend.capabilities.remote and not TorchBackend.capabilities.remote


def test_declared_capabilities_drive_the_engine(rna_path: Path, fixtures_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The real torch backend class, re-declared: the engine follows the declaration, not the name."""
    model = fixtures_dir / "tiny_a_official.pt"
    declared = TorchBackend.capabilities
    monkeypatch.setattr(TorchBackend, "capabilities", dataclasses.replace(declared, embeddings=False))
    with pytest.raises(BackendError, match="the torch backend cannot return cell embeddings"):
        sctranslator.translate(rna_path, model, PROTEINS, out=tmp_path / "e.zarr", backend="torch", embeddings=True)
    assert not (tmp_path / "e.zarr").exists()
    monkeypatch.setattr(TorchBackend, "capabilities", dataclasses.replace(
        declared, precisions={"cpu": ("fp32",), "cuda": ("fp32", "fp16")}))
    with pytest.raises(BackendError, match="the torch backend has no fp16 kernels on CPU.*--device cuda"):
        sctranslator.translate(rna_path, model, PROTEINS, out=tmp_path / "p.zarr", backend="torch", precision="fp16")
    # a backend declaring that it computes elsewhere gets one thread per block, whatever its name
    monkeypatch.setattr(TorchBackend, "capabilities", dataclasses.replace(declared, remote=True))
    result = sctranslator.translate(rna_path, model, PROTEINS, out=tmp_path / "r.zarr", backend="torch",
                                    allow_empty_cells=True, quiet=True)
    parallelism = result.uns["sctranslator"]["settings"]["parallelism"]
    assert parallelism["threads"] == 1 and "the server computes" in parallelism["why"]
    monkeypatch.setattr(TorchBackend, "capabilities", declared)
    local = sctranslator.translate(rna_path, model, PROTEINS, out=tmp_path / "l.zarr", backend="torch",
                                   allow_empty_cells=True, quiet=True)
    assert "the server computes" not in local.uns["sctranslator"]["settings"]["parallelism"]["why"]


def _defaults_of(options: object, names: set[str]) -> dict[str, object]:
    """The value `options` holds for each keyword name (in a group or as its own field)."""
    found = {}
    for name in names:
        holders = [options, *(getattr(options, a) for a in type(options).groups())]  # type: ignore[attr-defined]
        found[name] = next(getattr(h, name) for h in holders if name in {f.name for f in dataclasses.fields(h)})
    return found


@pytest.mark.parametrize("job", ["translate", "knockout", "interactions"])
def test_each_jobs_options_object_takes_its_keywords_with_the_same_defaults(job: str) -> None:
    from sctranslator.analysis.attention import interactions
    from sctranslator.analysis.knockout import knockout
    from sctranslator.options import AttentionOptions, KnockoutOptions

    function, cls = {"translate": (sctranslator.translate, TranslateOptions), "knockout": (knockout, KnockoutOptions),
                     "interactions": (interactions, AttentionOptions)}[job]
    parameters = {name: p for name, p in inspect.signature(function).parameters.items()
                  if name not in ("data", "model", "wait")}
    built = cls.from_kwargs()
    expected = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    if job == "translate":
        expected["backend_options"] = {}  # None in the signature: no options, held as an empty dict
    assert _defaults_of(built, set(expected)) == expected
    with pytest.raises(TypeError, match=rf"{job}\(\) got an unexpected keyword argument 'nope'"):
        cls.from_kwargs(nope=1)


def test_knockout_and_attention_options_check_as_their_functions_do() -> None:
    from sctranslator.options import AttentionOptions, KnockoutOptions

    with pytest.raises(OptionError, match="unknown semantics 'remove'"):
        KnockoutOptions.from_kwargs(genes=["CD4"], semantics="remove").check()
    with pytest.raises(OptionError, match="^--batch-size must be >= 1, got 0"):
        KnockoutOptions.from_kwargs(genes=["CD4"], batch_size=0).check()
    # Each size is named alone, with its command-line spelling (or keyword when it has none).
    for given, named in (({"top_k": 0}, "--top-k"), ({"top_k": -3}, "--top-k"), ({"block_cells": 0}, "--block-cells"),
                         ({"batch_size": -1}, "--batch-size"), ({"row_block": 0}, "row_block=")):
        with pytest.raises(OptionError, match=rf"^{named} must be >= 1, got {list(given.values())[0]}:") as caught:
            AttentionOptions.from_kwargs(**given).check()
        others = {"--top-k", "--block-cells", "--batch-size", "row_block"} - {named.rstrip("=")}
        assert not any(other in str(caught.value) for other in others)
    args = cli.build_parser().parse_args(["knockout", "in.h5ad", "--model", "demo", "--genes", "CD4,CD8A", "--out",
                                          "k.h5ad", "--semantics", "zero", "--block-cells", "64"])
    assert KnockoutOptions.from_cli_args(args) == KnockoutOptions.from_kwargs(
        genes=["CD4", "CD8A"], out="k.h5ad", semantics="zero", block_cells=64)


def test_knockout_and_attention_take_translates_selection_and_workers_flags() -> None:
    from sctranslator.options import AttentionOptions, KnockoutOptions

    selection = ["--cells", "c1,c2", "--obs-query", "n_genes > 10", "--max-cells", "3", "--workers", "2"]
    args = cli.build_parser().parse_args(["knockout", "in.h5ad", "--model", "demo", "--genes", "CD4", "--out",
                                          "k.h5ad", *selection])
    assert KnockoutOptions.from_cli_args(args) == KnockoutOptions.from_kwargs(
        genes=["CD4"], out="k.h5ad", cells=("c1", "c2"), obs_query="n_genes > 10", max_cells=3, workers=2)
    args = cli.build_parser().parse_args(["attention", "in.h5ad", "--model", "demo", "--out", "a", *selection])
    assert AttentionOptions.from_cli_args(args, kinds=args.kind) == AttentionOptions.from_kwargs(
        out="a", kinds="gene-protein,protein-protein", cells=("c1", "c2"), obs_query="n_genes > 10", max_cells=3,
        workers=2)
    with pytest.raises(OptionError, match="^--workers must be >= 1, got 0"):
        KnockoutOptions.from_kwargs(genes=["CD4"], workers=0).check()
    with pytest.raises(OptionError, match="unknown device 'gpu'"):
        KnockoutOptions.from_kwargs(genes=["CD4"], device="gpu").check()
