"""The block ledger (engine/ledger.py) and the all-or-nothing writes (_atomic.py) it and every output use."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sctranslator.analysis.knockout.store import KnockoutStore, job_dir_for
from sctranslator.engine.ledger import JOB_FILE, Ledger, block_ranges, read_record
from sctranslator.errors import OutputConflictError, StoreError
from sctranslator.util.atomic import atomic_write, atomic_write_path, atomic_write_text, install_dir, staging_dir

IDENTITY = {"model": "m1", "input": {"path": "x.h5ad", "n_obs": 10}}


def test_block_ranges_cover_every_row_once() -> None:
    for n_obs, rows in [(0, 4), (1, 4), (10, 4), (12, 4), (7, 1), (5, 100)]:
        ranges = block_ranges(n_obs, rows)
        covered = np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.array([], dtype=int)
        assert covered.tolist() == list(range(n_obs))
        assert all(0 < b - a <= rows for a, b in ranges)
    with pytest.raises(StoreError):
        block_ranges(10, 0)


def test_create_commit_and_resume(tmp_path: Path) -> None:
    job = tmp_path / "job"
    ledger = Ledger.create(job, identity=IDENTITY, n_obs=10, block_rows=4, extra={"complete": False})
    assert ledger.blocks() == [(0, 4), (4, 8), (8, 10)] and ledger.pending() == [0, 1, 2]
    ledger.commit(1)
    assert (job / "blocks" / "000000001").read_text() == "4 8\n"
    # A temporary file left by a kill during a commit is not a committed block.
    (job / "blocks" / ".000000002.tmp-1-abc").write_text("half")
    assert ledger.committed() == {1} and ledger.pending() == [0, 2]
    again, resumed = Ledger.open(job, identity=IDENTITY, n_obs=10, block_rows=99)
    assert resumed and again.block_rows == 4 and again.pending() == [0, 2]  # the recorded block size wins
    with pytest.raises(StoreError, match="different model, input or settings"):
        Ledger.open(job, identity={**IDENTITY, "model": "m2"}, n_obs=10, block_rows=4)
    fresh, resumed = Ledger.open(job, identity={**IDENTITY, "model": "m2"}, n_obs=10, block_rows=5, replace=True)
    assert not resumed and fresh.pending() == [0, 1] and read_record(job)["identity"]["model"] == "m2"
    with pytest.raises(StoreError, match="not committed"):
        fresh.require_complete("job")
    fresh.commit(0)
    fresh.commit(1)
    fresh.require_complete("job")
    fresh.update_record({"complete": True, "last_run": {"blocks": 2}})
    assert read_record(job)["complete"] is True and read_record(job)["identity"]["model"] == "m2"
    with pytest.raises(StoreError, match="fixed"):
        fresh.update_record({"identity": {}})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging left behind"


def test_payload_blocks_with_a_suffix(tmp_path: Path) -> None:
    ledger = Ledger.create(tmp_path / "job", identity=IDENTITY, n_obs=3, block_rows=2, suffix=".npz")
    ledger.commit(0, lambda handle: np.savez(handle, x=np.arange(3)))
    assert ledger.block_file(0).name == "000000000.npz" and ledger.pending() == [1]
    with np.load(ledger.block_file(0)) as data:
        assert data["x"].tolist() == [0, 1, 2]


def test_a_damaged_record_is_no_record(tmp_path: Path) -> None:
    job = tmp_path / "job"
    Ledger.create(job, identity=IDENTITY, n_obs=3, block_rows=2)
    (job / JOB_FILE).write_text("{truncated")
    assert read_record(job) is None
    with pytest.raises(StoreError, match="missing or damaged"):
        Ledger.reopen(job)


def test_knockout_store_resumes_and_refuses_a_foreign_job_dir(tmp_path: Path) -> None:
    out = tmp_path / "effects.h5ad"
    store = KnockoutStore.open(out, identity=IDENTITY, n_obs=5, block_rows=2, overwrite=False)
    store.commit(2, {"a": np.ones(2)})
    again = KnockoutStore.open(out, identity=IDENTITY, n_obs=5, block_rows=2, overwrite=False)
    assert again.pending() == [0, 1] and again.load(2)["a"].tolist() == [1.0, 1.0]
    with pytest.raises(StoreError, match="different"):
        KnockoutStore.open(out, identity={"other": 1}, n_obs=5, block_rows=2, overwrite=False)
    other = tmp_path / "other.h5ad"
    job_dir_for(other).mkdir()
    (job_dir_for(other) / "keep.txt").write_text("mine")
    with pytest.raises(OutputConflictError, match="did not write"):
        KnockoutStore.open(other, identity=IDENTITY, n_obs=5, block_rows=2, overwrite=True)
    assert (job_dir_for(other) / "keep.txt").read_text() == "mine"


def test_a_failed_write_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write_text(path, json.dumps({"v": 1}))

    def crash(handle) -> None:
        handle.write(b'{"v": 2')  # half written, then the writer dies
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    with pytest.raises(RuntimeError):
        atomic_write_path(path, lambda tmp: (tmp.write_text("{"), (_ for _ in ()).throw(RuntimeError("x"))))
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_install_dir_replaces_a_folder_whole(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with staging_dir(final) as staging:
        (staging / "new.txt").write_text("new")
        install_dir(staging, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError), staging_dir(final) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("failed before install")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (final / "new.txt").exists()
