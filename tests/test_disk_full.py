"""Full disks and refused writes on a real file system: a small tmpfs this test mounts (needs root; skipped
where mounting is not allowed, but not under CI=true as root, where it must work)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from datafiles import PBMC, TINY_A, data_file

from sctranslator.engine import writeback
from sctranslator.util.atomic import temporary_sibling

PAGE = 4096


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sctranslator", *args]


def _translate(out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [str(data_file(PBMC) / "rna.h5ad"), "--model", str(data_file(TINY_A)), "--proteins", "CD3,CD4,CD8a,CD14",
            "--block-cells", "64", "--workers", "1", "--quiet", "--allow-empty-cells", "--normalize", "total_log1p"]
    return subprocess.run(cli("translate", *args, "--out", str(out), *extra), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def _mount(directory: Path, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An empty directory on a tmpfs of 64 KiB (remount it to resize it or make it read-only)."""
    directory = tmp_path / "small"
    directory.mkdir()
    try:
        _mount(directory, "size=64k")
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            raise AssertionError(f"CI runs as root, so mounting a tmpfs must work: {error}") from error
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


def _resize(directory: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(directory)], check=True, capture_output=True)


def _pages(path: Path) -> int:
    return sum(-(-f.stat().st_size // PAGE) for f in path.rglob("*") if f.is_file())


def _hidden(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


def _one_line_error(done: subprocess.CompletedProcess, kind: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {kind}: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return last


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run on an ordinary disk."""
    out = tmp_path_factory.mktemp("reference") / "clean.zarr"
    done = _translate(out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_disk_full_during_block_writes_then_resume_is_identical(tmpfs: Path, reference: Path) -> None:
    chunks = [f for f in (reference / "X").iterdir() if f.name[0].isdigit()]
    markers = list((reference / ".sctranslator-job" / "blocks").iterdir())
    n_blocks = len(markers)
    # Room for the empty store and its lock, and for about half the blocks (a chunk and a marker each).
    # (The run's statistics are added to uns only at the end.)
    skeleton = _pages(reference) - _pages(reference / "uns" / "sctranslator" / "run") - len(chunks) - len(markers)
    _resize(tmpfs, (skeleton + n_blocks // 2) * PAGE)
    out = tmpfs / "out.zarr"
    last = _one_line_error(_translate(out), "DiskFullError")
    assert str(out) in last and "free there" in last and "more needed" in last, last
    committed = sorted(int(name) for name in os.listdir(out / ".sctranslator-job" / "blocks") if name.isdigit())
    assert 0 < len(committed) < n_blocks, (committed, last)
    # Every committed block's chunk is complete; no temporaries are left in the store or beside it.
    partial = ad.read_zarr(out)
    done_rows = np.zeros(partial.n_obs, bool)
    for index in committed:
        done_rows[index * 64:(index + 1) * 64] = True
    np.testing.assert_array_equal(partial.X[done_rows], ad.read_zarr(reference).X[done_rows])
    assert not [f for f in out.rglob(".*") if f.name not in (".zattrs", ".zarray", ".zgroup", ".zmetadata",
                                                              ".sctranslator-job", ".sctranslator-output.json")]
    assert _hidden(tmpfs) == []
    # Space freed: the same command resumes and the result is what an uninterrupted run gives.
    _resize(tmpfs, 8 << 20)
    resumed = _translate(out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(committed)} blocks were already done" in resumed.stdout
    np.testing.assert_array_equal(ad.read_zarr(out).X, ad.read_zarr(reference).X)
    assert _hidden(tmpfs) == []


def test_disk_full_during_write_h5ad_is_a_named_error_and_leaves_nothing(tmpfs: Path, tmp_path: Path,
                                                                        reference: Path) -> None:
    out, written = tmp_path / "out.zarr", tmpfs / "with_proteins.h5ad"
    _resize(tmpfs, 256 << 10)  # the input alone is 1 MB
    done = _translate(out, "--write-h5ad", str(written))
    last = _one_line_error(done, "DiskFullError")  # not a crash of the HDF5 library (signal, exit < 0)
    assert str(written) in last and "needed" in last, last
    assert os.listdir(tmpfs) == [], "no partial file and no lock is left on the full disk"
    # The store was complete before the write-back began, so the re-run only writes the h5ad.
    _resize(tmpfs, 8 << 20)
    again = _translate(out, "--write-h5ad", str(written))
    assert again.returncode == 0, again.stderr
    assert "blocks were already done" in again.stdout, again.stdout
    back = ad.read_h5ad(written)
    np.testing.assert_array_equal(back.obsm["protein_predicted"].to_numpy(), ad.read_zarr(reference).X)
    assert os.listdir(tmpfs) == ["with_proteins.h5ad"]


def test_leftovers_of_a_killed_write_back_are_removed_by_the_next_run(tmp_path: Path) -> None:
    out, written = tmp_path / "out.zarr", tmp_path / "with_proteins.h5ad"
    # What kill -9 leaves part-way through a write-back (named by the writers' own functions): the staged
    # file, the HDF5 writer's own staging file inside it, and a store's staging folder.
    staged = temporary_sibling(written)
    leftovers = [staged, writeback._staging(staged), temporary_sibling(out, "partial")]
    for path in leftovers:
        path.write_bytes(b"\0" * 1000)
    unrelated = tmp_path / ".with_proteins.h5ad.notes"
    unrelated.write_text("not ours")
    done = _translate(out, "--write-h5ad", str(written))
    assert done.returncode == 0, done.stderr
    assert not any(path.exists() for path in leftovers)
    assert unrelated.exists()


@pytest.mark.parametrize("how", ["read-only file system", "read-only bind mount"])
def test_read_only_output_is_a_named_error(tmpfs: Path, tmp_path: Path, how: str) -> None:
    _resize(tmpfs, 8 << 20)
    if how == "read-only file system":
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True, capture_output=True)
        target = tmpfs
    else:
        target = tmp_path / "ro"
        target.mkdir()
        subprocess.run(["mount", "--bind", "-o", "ro", str(tmpfs), str(target)], check=True, capture_output=True)
    try:
        out = target / "out.zarr"
        last = _one_line_error(_translate(out), "OutputWriteError")
        assert str(target) in last and "read-only" in last
        assert not out.exists()
        # A write-back into the read-only place, with the store on a writable disk.
        written = target / "with_proteins.h5ad"
        last = _one_line_error(_translate(tmp_path / "ok.zarr", "--write-h5ad", str(written)), "OutputWriteError")
        assert "read-only" in last
    finally:
        if how != "read-only file system":
            with contextlib.suppress(Exception):
                subprocess.run(["umount", str(target)], check=False, capture_output=True)
