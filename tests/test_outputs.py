"""Never delete what is not ours: every command that writes, on real (demo) data.

For each command: (a) output == input refused and the input unchanged byte for byte, (b) output
inside an input / an input inside the output refused, (c) a user's folder or file at the output
refused even with --overwrite, without suggesting --overwrite, and untouched, (d) an earlier output
of the same kind replaced with --overwrite (and only with it, and never with a file of someone else's
inside it), (e) an output of another kind refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import pytest

import sctranslator
from sctranslator.cli.entry import main
from sctranslator.errors import OutputConflictError
from sctranslator.outputs import IDENTITY_FILE, IDENTITY_KEY, claim_output, read_identity, write_identity

DEMO = Path(sctranslator.__file__).parent / "data" / "demo"
N_CELLS = 40


def checksums(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of the file), keyed by relative path."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 demo cells as .h5ad and .zarr, their proteins, a copy of the demo model and demo folder,
    a translate store (for evaluate) and an ONNX export (for triton)."""
    root = tmp_path_factory.mktemp("outputs")
    rna = ad.read_h5ad(DEMO / "rna.h5ad")[:N_CELLS].copy()
    protein = ad.read_h5ad(DEMO / "protein.h5ad")[rna.obs_names].copy()
    data = root / "data.zarr"  # a folder of inputs; the suffix lets knockout (.zarr/.h5ad) aim at it
    data.mkdir()
    rna.write_h5ad(data / "rna.h5ad")
    rna.write_zarr(data / "IN.zarr")
    protein.write_h5ad(data / "protein.h5ad")
    model = shutil.copytree(DEMO / "model", root / "model")
    demo = shutil.copytree(DEMO, root / "demo-data")
    pred = root / "pred.zarr"
    sctranslator.translate(data / "rna.h5ad", model, out=pred, workers=1)
    onnx_file = root / "exported.onnx"
    assert main(["export", "onnx", str(model), str(onnx_file), "--no-validate"]) == 0
    return {"root": root, "data": data, "rna": data / "rna.h5ad", "zarr": data / "IN.zarr",
            "protein": data / "protein.h5ad", "model": model, "demo": demo, "pred": pred, "onnx": onnx_file}


@dataclass(frozen=True)
class Command:
    name: str
    kind: str
    suffix: str  # of the output path ("" for folders)
    argv: Callable[[dict[str, Path], Path], list[str]]  # (world, output path) -> CLI arguments
    main_input: str  # world key of the input that (a) writes over

    def run(self, world: dict[str, Path], out: Path, overwrite: bool) -> int:
        return main([*self.argv(world, out), *(["--overwrite"] if overwrite else [])])


def _triton(w: dict[str, Path], out: Path) -> list[str]:
    # The claimed output is the model directory REPO/NAME.
    return ["export", "triton", str(w["model"]), "--repo", str(out.parent), "--name", out.name,
            "--onnx", str(w["onnx"]), "--no-validate"]


COMMANDS = [
    Command("translate", "translate", ".zarr", lambda w, out: [
        "translate", str(w["zarr"]), "--model", str(w["model"]), "--out", str(out), "--workers", "1", "--quiet"],
        "zarr"),
    Command("knockout", "knockout", ".zarr", lambda w, out: [
        "knockout", str(w["zarr"]), "--model", str(w["model"]), "--genes", "HES4", "--proteins", "CD3,CD4",
        "--out", str(out), "--quiet"], "zarr"),
    Command("attention", "attention", "", lambda w, out: [
        "attention", str(w["rna"]), "--model", str(w["model"]), "--proteins", "CD3,CD4", "--batch-size", "8",
        "--top-k", "3", "--out", str(out), "--quiet"], "rna"),
    Command("evaluate", "evaluate", "", lambda w, out: [
        "evaluate", "--pred", str(w["pred"]), "--truth", str(w["protein"]), "--no-plots", "--out", str(out)],
        "pred"),
    Command("finetune", "finetune", "", lambda w, out: [
        "finetune", "--rna", str(w["rna"]), "--protein", str(w["protein"]), "--init", str(w["model"]),
        "--out", str(out), "--steps", "1", "--batch-size", "8", "--quiet"], "model"),
    Command("export-onnx", "export-onnx", ".onnx", lambda w, out: [
        "export", "onnx", str(w["model"]), str(out), "--no-validate"], "model"),
    Command("export-triton", "export-triton", "", _triton, "model"),
    Command("demo", "demo", "", lambda w, out: ["demo", "--out", str(out), "--workers", "1"], "demo"),
]
IDS = [c.name for c in COMMANDS]


@pytest.fixture(autouse=True)
def demo_copy(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo reads a copy of its package data, so a failure here can never damage the package."""
    import sctranslator.cli.demo as demo_module

    @contextlib.contextmanager
    def root() -> Iterator[Path]:
        yield world["demo"]

    monkeypatch.setattr(demo_module, "demo_root", root)


def _refused(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2 and "OutputConflictError" in err, err
    return err


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_output_equal_to_the_input_is_refused_and_the_input_untouched(
        command: Command, world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    target = world[command.main_input]
    before = checksums(target)
    err = _refused(capsys, command.run(world, target, overwrite=True))
    assert "is the input" in err
    assert checksums(target) == before


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_b_output_inside_an_input_or_around_one_is_refused(
        command: Command, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = world[command.main_input]
    before = checksums(target.parent)
    if target.is_dir():
        inside = target / f"inner{command.suffix}"
        assert "lies inside the input" in _refused(capsys, command.run(world, inside, overwrite=True))
        assert not inside.exists()
    around = target.parent  # a folder that holds the input (and, for export triton, REPO/NAME is it)
    assert "contains the input" in _refused(capsys, command.run(world, around, overwrite=True))
    # The same path reached through a symbolic link is the same path.
    link = tmp_path / "link"
    link.symlink_to(target.parent, target_is_directory=True)
    assert "is the input" in _refused(capsys, command.run(world, link / target.name, overwrite=True))
    assert checksums(target.parent) == before


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_c_a_users_folder_or_file_is_refused_without_suggesting_overwrite(
        command: Command, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"mine{command.suffix}"
    if command.suffix == ".onnx":
        out.write_bytes(b"\x08\x07 someone else's model bytes")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("my own notes, not sctranslator's")
    before = checksums(out)
    for overwrite in (False, True):
        err = _refused(capsys, command.run(world, out, overwrite=overwrite))
        assert "did not write" in err and "overwrite" not in err.lower(), err
    assert checksums(out) == before


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_e_an_output_of_another_kind_is_refused(command: Command, world: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"other{command.suffix}"
    out.mkdir()
    (out / "result.csv").write_text("a,b\n1,2\n")
    write_identity(out, "evaluate" if command.kind != "evaluate" else "attention")
    before = checksums(out)
    err = _refused(capsys, command.run(world, out, overwrite=True))
    assert "not a" in err and "overwrite" not in err.lower(), err
    assert checksums(out) == before


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_d_an_earlier_output_of_the_same_kind_is_replaced_only_with_overwrite(
        command: Command, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"result{command.suffix}"
    assert command.run(world, out, overwrite=False) == 0, capsys.readouterr().err
    assert read_identity(out)["kind"] == command.kind
    if command.kind in ("translate", "knockout", "attention"):
        # Resumable jobs (block ledgers): the same command again resumes (it is the same job) ...
        assert command.run(world, out, overwrite=False) == 0, capsys.readouterr().err
    else:
        # ... the others refuse to replace it silently, and say how to.
        assert "--overwrite" in _refused(capsys, command.run(world, out, overwrite=False))
    if out.is_dir():
        # A file someone put inside the folder: --overwrite would delete it with the folder, so it refuses,
        # names it and deletes nothing.
        mine = out / "notes-of-mine.txt"
        mine.write_text("not sctranslator's")
        before = checksums(out)
        err = _refused(capsys, command.run(world, out, overwrite=True))
        assert "notes-of-mine.txt" in err and "nothing was changed" in err, err
        assert checksums(out) == before
        mine.unlink()
    capsys.readouterr()
    assert command.run(world, out, overwrite=True) == 0, capsys.readouterr().err
    assert read_identity(out)["kind"] == command.kind
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")
                 and not p.name.endswith(("knockout-job", "attention-job"))]
    assert not leftovers, leftovers


def test_translate_write_back_onto_its_input_is_refused(world: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = checksums(world["rna"])
    rc = main(["translate", str(world["rna"]), "--model", str(world["model"]), "--out", str(tmp_path / "p.zarr"),
               "--write-h5ad", str(world["rna"]), "--overwrite", "--quiet"])
    assert "is the input" in _refused(capsys, rc)
    assert checksums(world["rna"]) == before and not (tmp_path / "p.zarr").exists()


def test_translate_write_back_file_carries_its_identity(world: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.h5ad"
    sctranslator.translate(world["rna"], world["model"], out=tmp_path / "p.zarr", write_h5ad=copy, workers=1)
    assert read_identity(copy)["kind"] == "translate-writeback"
    assert ad.read_h5ad(copy).obsm["protein_predicted"].shape == (N_CELLS, 14)
    with pytest.raises(OutputConflictError, match="--overwrite"):
        claim_output(copy, "translate-writeback")


# -- the rule itself -------------------------------------------------------------------------------


def test_identity_records_of_each_output_shape(world: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    assert read_identity(folder) is None
    write_identity(folder, "attention")
    assert (folder / IDENTITY_FILE).is_file() and read_identity(folder)["kind"] == "attention"
    h5 = tmp_path / "x.h5ad"
    ad.read_h5ad(world["protein"]).write_h5ad(h5)
    assert read_identity(h5) is None
    write_identity(h5, "knockout")
    with h5py.File(h5, "r") as handle:
        assert "knockout" in handle.attrs[IDENTITY_KEY]
    assert read_identity(h5)["kind"] == "knockout"
    assert ad.read_h5ad(h5).n_obs == N_CELLS  # still a plain AnnData file
    assert read_identity(world["onnx"])["kind"] == "export-onnx"  # in the ONNX metadata
    assert read_identity(world["pred"])["kind"] == "translate"
    fake = tmp_path / "fake.h5ad"
    fake.write_text("not HDF5")
    assert read_identity(fake) is None
    link = tmp_path / "link"
    link.symlink_to(folder)
    assert read_identity(link) is None
    with pytest.raises(OutputConflictError, match="symbolic link"):
        claim_output(link, "attention", overwrite=True)


def test_a_loaded_model_protects_the_folder_it_came_from(world: dict[str, Path]) -> None:
    from sctranslator.model import load_model

    model = load_model(world["model"])
    with pytest.raises(OutputConflictError, match="lies inside the input"):
        claim_output(world["model"] / "model.onnx", "export-onnx", inputs=[model], overwrite=True)
    assert claim_output(world["root"] / "elsewhere.onnx", "export-onnx", inputs=[model, None]) is False


def test_claim_checks_siblings_of_a_missing_output(tmp_path: Path) -> None:
    (tmp_path / "effects_mean.csv").write_text("mine")
    with pytest.raises(OutputConflictError, match="effects_mean.csv exists"):
        claim_output(tmp_path / "effects.h5ad", "knockout", siblings=[tmp_path / "effects_mean.csv"])
    assert (tmp_path / "effects_mean.csv").read_text() == "mine"
    assert claim_output(tmp_path / "free.h5ad", "knockout", siblings=[tmp_path / "free_mean.csv"]) is False


def test_finetune_bundle_and_checkpoint_folder_are_claimed_before_training(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "state.pt").write_bytes(b"someone's state")
    rc = main(["finetune", "--rna", str(world["rna"]), "--protein", str(world["protein"]), "--init",
               str(world["model"]), "--out", str(tmp_path / "bundle"), "--work-dir", str(work), "--steps", "1",
               "--overwrite", "--quiet"])
    assert "did not write" in _refused(capsys, rc)
    assert (work / "state.pt").read_bytes() == b"someone's state" and not (tmp_path / "bundle").exists()


def test_locks_taken_in_a_helper_thread_pass_to_the_caller(tmp_path: Path) -> None:
    """A collection prepares its next input in a helper thread; the caller then writes that store."""
    import threading
    from contextvars import copy_context

    from sctranslator.errors import OutputLockedError
    from sctranslator.outputs import hand_over_locks, lock_output, writing

    out = tmp_path / "next.zarr"
    helper: list[int] = []

    def prepare() -> None:
        helper.append(threading.get_ident())
        lock_output(out)

    with writing():
        thread = threading.Thread(target=copy_context().run, args=(prepare,))  # in this job's scope
        thread.start()
        thread.join()
        with pytest.raises(OutputLockedError):  # held by the helper thread, not by this one
            lock_output(out)
        hand_over_locks(helper[0])
        lock_output(out)  # now this thread's own lock: a no-op
        assert (tmp_path / ".next.zarr.sctranslator-lock").exists()
    assert not (tmp_path / ".next.zarr.sctranslator-lock").exists()  # released with the scope
