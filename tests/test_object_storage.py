"""Inputs and outputs in object storage, against a real S3 API server (moto_server on 127.0.0.1).

Every run here is compared with the same run on local files: predictions must be identical.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from datafiles import PBMC, TINY_A, data_file

import sctranslator
from sctranslator.errors import OutputConflictError, OutputLockedError, StoreError, UnsupportedStorageError
from sctranslator.model import ModelConfig, TranslatorModel, save_model

PROTEINS = ["CD3", "CD4", "CD14", "CD19"]
COMMON = {"normalize": "total_log1p", "allow_empty_cells": True, "quiet": True}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sctranslator", *args]


def run_cli(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:  # noqa: ANN003
    return subprocess.run(cli(*args), env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True,
                          text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> ad.AnnData:
    """300 real PBMC cells (the committed subset's first rows)."""
    return ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:300].copy()


@pytest.fixture(scope="module")
def local_inputs(cells: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("local")
    cells.write_h5ad(root / "rna.h5ad")
    cells.write_zarr(root / "rna.zarr")
    return {"h5ad": root / "rna.h5ad", "zarr": root / "rna.zarr"}


def upload(s3_server, local: Path, url: str) -> str:  # noqa: ANN001
    fs = s3_server.filesystem()
    fs.put(str(local), url, recursive=local.is_dir())
    return url


def test_input_and_output_on_s3_equal_local(s3_server, local_inputs: dict[str, Path], tmp_path: Path) -> None:  # noqa: ANN001
    bucket = s3_server.bucket("atlas")
    reference = sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=tmp_path / "local.zarr", **COMMON)
    expected = np.asarray(reference.X)
    fs = s3_server.filesystem()
    for kind, local in local_inputs.items():
        source = upload(s3_server, local, f"{bucket}/in/rna.{kind}")
        out = f"{bucket}/out/{kind}.zarr"
        result = sctranslator.translate(source, TINY_A, PROTEINS, out=out, **COMMON)
        np.testing.assert_array_equal(np.asarray(result.X), expected)
        assert list(result.obs_names) == list(reference.obs_names)
        # The store is really in the bucket (not a local folder named "s3:"), and complete.
        record = json.loads(fs.cat_file(f"{out}/.sctranslator-job/job.json"))
        assert record["complete"] is True and record["last_run"]["blocks_skipped"] == 0
        assert json.loads(fs.cat_file(f"{out}/.sctranslator-output.json"))["kind"] == "translate"
        assert not Path("s3:").exists()
        # Read back independently of sctranslator, with anndata over the bucket.
        import zarr

        stored = ad.io.read_elem(zarr.open_group(fs.get_mapper(out.removeprefix("s3://")), mode="r")["X"])
        np.testing.assert_array_equal(stored, expected)
    # The same call again resumes: nothing recomputed.
    again = sctranslator.translate(f"{bucket}/in/rna.zarr", TINY_A, PROTEINS, out=f"{bucket}/out/zarr.zarr",
                                   **COMMON)
    assert again.uns["sctranslator"]["run"]["blocks_computed"] == 0
    np.testing.assert_array_equal(np.asarray(again.X), expected)


def test_write_h5ad_to_s3(s3_server, local_inputs: dict[str, Path], cells: ad.AnnData, tmp_path: Path) -> None:  # noqa: ANN001
    bucket = s3_server.bucket("writeback")
    target = f"{bucket}/with_proteins.h5ad"
    result = sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=f"{bucket}/pred.zarr",
                                    write_h5ad=target, **COMMON)
    fs = s3_server.filesystem()
    local = tmp_path / "copy.h5ad"
    fs.get_file(target, str(local))
    written = ad.read_h5ad(local)
    np.testing.assert_array_equal(written.obsm["protein_predicted"].to_numpy(), np.asarray(result.X))
    assert (written.X != cells.X).nnz == 0  # the measured RNA travels unchanged
    # The write-back carries our identity: a second run without --overwrite refuses to replace it.
    with pytest.raises(OutputConflictError, match="--overwrite"):
        sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=f"{bucket}/pred2.zarr",
                               write_h5ad=target, **COMMON)


def test_foreign_objects_and_held_locks_are_respected(s3_server, local_inputs: dict[str, Path]) -> None:  # noqa: ANN001
    bucket = s3_server.bucket("guarded")
    fs = s3_server.filesystem()
    fs.pipe_file(f"{bucket}/theirs.zarr/data.bin", b"not ours")
    with pytest.raises(OutputConflictError, match="no sctranslator identity record"):
        sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=f"{bucket}/theirs.zarr", **COMMON)
    assert fs.cat_file(f"{bucket}/theirs.zarr/data.bin") == b"not ours"
    assert fs.find(f"{bucket}/theirs.zarr") == ["guarded/theirs.zarr/data.bin"]
    # A live job on another host holds the output: refused, named.
    lock = f"{bucket}/.busy.zarr.sctranslator-lock"
    fs.pipe_file(lock, json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "started": "now"}).encode())
    with pytest.raises(OutputLockedError, match="host elsewhere"):
        sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=f"{bucket}/busy.zarr", **COMMON)
    assert not fs.exists(f"{bucket}/busy.zarr")
    # A lock left by a dead process of this host is taken over, and released at the end.
    import socket

    from sctranslator.util.output_lock import _boot_id

    fs.pipe_file(lock, json.dumps({"host": socket.gethostname(), "boot_id": _boot_id(), "pid": 2 ** 22 + 7,
                                   "token": "dead"}).encode())
    sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=f"{bucket}/busy.zarr", **COMMON)
    assert fs.exists(f"{bucket}/busy.zarr/.sctranslator-job/job.json")
    fs.invalidate_cache()
    assert not fs.exists(lock)


@pytest.mark.slow
def test_kill_9_on_s3_then_rerun_completes_identically(s3_server, cells: ad.AnnData, tmp_path: Path) -> None:  # noqa: ANN001
    bucket = s3_server.bucket("resume")
    torch.manual_seed(3)
    # Big enough that the job takes seconds, so it can be killed half way.
    model = TranslatorModel(ModelConfig.sized(dim=32, enc_depth=2, dec_depth=1, enc_heads=4, dec_heads=2,
                                              enc_dim_head=16, dec_dim_head=8, max_genes=1024, max_proteins=16))
    bundle = save_model(model, tmp_path / "model")
    many = ad.concat([cells] * 3)
    many.obs_names = [f"cell{i}" for i in range(many.n_obs)]
    local = tmp_path / "rna.h5ad"
    many.write_h5ad(local)
    source = upload(s3_server, local, f"{bucket}/rna.h5ad")
    out = f"{bucket}/interrupted.zarr"
    common = ["--model", str(bundle), "--proteins", ",".join(PROTEINS), "--block-cells", "30", "--batch-size",
              "15", "--workers", "1", "--quiet", "--normalize", "total_log1p", "--allow-empty-cells"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cli("translate", source, "--out", out, *common), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fs = s3_server.filesystem()
    markers = f"{out}/.sctranslator-job/blocks"
    deadline = time.time() + 300
    committed: list[str] = []
    while time.time() < deadline and process.poll() is None:
        fs.invalidate_cache()
        committed = fs.ls(markers, detail=False) if fs.exists(markers) else []
        if len(committed) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the job finished before it could be killed; make it bigger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    fs.invalidate_cache()
    committed = fs.ls(markers, detail=False)
    n_blocks = -(-many.n_obs // 30)
    assert 3 <= len(committed) < n_blocks
    # The killed job's lock object is left behind; the re-run takes it over (its PID is gone).
    rerun = run_cli(["translate", source, "--out", out, *common], {})
    assert rerun.returncode == 0, rerun.stderr
    fs.invalidate_cache()
    record = json.loads(fs.cat_file(f"{out}/.sctranslator-job/job.json"))
    assert record["complete"] is True
    assert record["last_run"]["blocks_skipped"] == len(committed)
    assert record["last_run"]["blocks_computed"] == n_blocks - len(committed)
    resumed = sctranslator.engine.output_reader.open_predictions(out)
    uninterrupted = sctranslator.translate(local, bundle, PROTEINS, out=tmp_path / "clean.zarr", block_cells=30,
                                           batch_size=15, **COMMON)
    assert not np.isnan(np.asarray(resumed.X)).any()
    np.testing.assert_array_equal(np.asarray(resumed.X), np.asarray(uninterrupted.X))
    assert list(resumed.obs_names) == list(uninterrupted.obs_names)


def test_unsupported_locations_are_named_errors_before_any_work(s3_server, local_inputs: dict[str, Path],  # noqa: ANN001
                                                                tmp_path: Path) -> None:
    data = str(local_inputs["h5ad"])
    model = ["--model", str(TINY_A), "--proteins", "CD3"]
    cases = [
        (["translate", "ftp://host/rna.h5ad", "--out", "pred.zarr", *model], "UnsupportedStorageError", "ftp://"),
        (["translate", data, "--out", "ftp://host/pred.zarr", *model], "UnsupportedStorageError", "ftp://"),
        (["translate", data, "--out", "https://host/pred.zarr", *model], "UnsupportedStorageError", "read-only"),
        (["translate", data, "--out", "pred.zarr", "--write-h5ad", "memory://x.h5ad", *model],
         "UnsupportedStorageError", "memory://"),
        (["knockout", data, "--out", "s3://bucket/ko.zarr", "--genes", "CD3E", *model], "UnsupportedStorageError",
         "local path only"),
        (["translate", data, "--out", "s3://atlas/p.zarr", "--storage-options", "[1]", *model], "OptionError",
         "JSON object"),
    ]
    for args, error, text in cases:
        done = run_cli(args, s3_server.env, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert f"error: {error}:" in done.stderr and text in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert sorted(os.listdir(tmp_path)) == [], f"{args} wrote {os.listdir(tmp_path)}"


def test_missing_extra_and_storage_options(s3_server, local_inputs: dict[str, Path], tmp_path: Path) -> None:  # noqa: ANN001
    bucket = s3_server.bucket("options")
    args = ["translate", str(local_inputs["h5ad"]), "--out", f"{bucket}/p.zarr", "--model", str(TINY_A),
            "--proteins", "CD3", "--normalize", "total_log1p", "--allow-empty-cells", "--quiet"]
    blocked = ("import sys; sys.modules['s3fs'] = None; from sctranslator.cli.entry import main; "
               "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", blocked, *args], env={**os.environ, **s3_server.env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "error: MissingExtraError:" in done.stderr and "sctranslator[s3]" in done.stderr, done.stderr
    assert os.listdir(tmp_path) == [] and not s3_server.filesystem().exists(f"{bucket}/p.zarr")
    # Without the AWS_* environment, --storage-options alone reaches the server.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    options = json.dumps({"key": "testing", "secret": "testing", "endpoint_url": s3_server.endpoint})
    done = subprocess.run(cli(*args, "--storage-options", options), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    fs = s3_server.filesystem()
    fs.invalidate_cache()
    assert json.loads(fs.cat_file(f"{bucket}/p.zarr/.sctranslator-job/job.json"))["complete"] is True


def test_http_input_read_only(local_inputs: dict[str, Path], tmp_path: Path) -> None:
    """http(s):// inputs (a Zarr store and an h5ad on a real web server on 127.0.0.1) equal the local run."""
    import shutil

    from s3_server import free_port

    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(local_inputs["h5ad"], served / "rna.h5ad")
    shutil.copytree(local_inputs["zarr"], served / "rna.zarr")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port), "-d", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/rna.h5ad", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the web server did not start"
                time.sleep(0.2)
        expected = np.asarray(sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, **COMMON).X)
        for name in ("rna.zarr", "rna.h5ad"):
            result = sctranslator.translate(f"http://127.0.0.1:{port}/{name}", TINY_A, PROTEINS, **COMMON)
            np.testing.assert_array_equal(np.asarray(result.X), expected)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_interrupted_creation_is_rebuilt_and_overwrite_replaces(s3_server, local_inputs: dict[str, Path]) -> None:  # noqa: ANN001
    from sctranslator.errors import StoreError
    from sctranslator.outputs import identity_record

    bucket = s3_server.bucket("rebuild")
    fs = s3_server.filesystem()
    out = f"{bucket}/half.zarr"
    # What a job killed during creation leaves: our identity record, some objects, no job record.
    fs.pipe_file(f"{out}/.sctranslator-output.json", json.dumps(identity_record("translate")).encode())
    fs.pipe_file(f"{out}/X/0.0", b"half-written")
    first = sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS[:2], out=out, **COMMON)
    fs.invalidate_cache()
    assert not fs.exists(f"{out}/X/0.0") or fs.cat_file(f"{out}/X/0.0") != b"half-written"
    assert json.loads(fs.cat_file(f"{out}/.sctranslator-job/job.json"))["complete"] is True
    assert first.n_vars == 2
    # Other settings: refused without --overwrite, replaced with it.
    with pytest.raises(StoreError, match="different model, input or settings"):
        sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=out, **COMMON)
    replaced = sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=out, overwrite=True, **COMMON)
    expected = sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, **COMMON)
    np.testing.assert_array_equal(np.asarray(replaced.X), np.asarray(expected.X))
    assert list(replaced.var_names) == list(expected.var_names)


def test_collection_reads_url_inputs_and_refuses_bad_url_out(s3_server, local_inputs: dict[str, Path],  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    """URL inputs of a collection stay URLs (stores named after their last component) with a local DIR;
    an --out URL with a store suffix or another scheme, a URL pattern and a pathlib-folded URL are named
    errors before any work."""
    bucket = s3_server.bucket("collect")
    first = upload(s3_server, local_inputs["h5ad"], f"{bucket}/a.h5ad")
    second = upload(s3_server, local_inputs["zarr"], f"{bucket}/b.zarr")
    reference = sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=tmp_path / "local.zarr", **COMMON)
    results = sctranslator.translate([first, second], TINY_A, PROTEINS, out=tmp_path / "coll", **COMMON)
    for result in results:
        np.testing.assert_array_equal(np.asarray(result.X), np.asarray(reference.X))
    record = json.loads((tmp_path / "coll" / "collection.json").read_text())
    assert [e["input"] for e in record["inputs"]] == [first, second]
    assert [e["store"] for e in record["inputs"]] == ["a.zarr", "b.zarr"]
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()
    fs = s3_server.filesystem()
    model = ["--model", str(TINY_A), "--proteins", "CD3"]
    cases = [
        (["translate", str(local_inputs["h5ad"]), first, "--out", f"{bucket}/coll2.zarr", *model],
         "OptionError", "directory of stores"),
        (["translate", str(local_inputs["h5ad"]), first, "--out", "ftp://host/coll2", *model],
         "UnsupportedStorageError", "not supported"),
        (["translate", f"{bucket}/*.h5ad", "--out", "coll3", *model], "UnsupportedStorageError", "patterns"),
        (["translate", str(local_inputs["h5ad"]), "--out", f"{bucket}/", *model], "OptionError", "bucket root"),
        (["translate", str(local_inputs["h5ad"]), "--out", f"S3://{bucket.removeprefix('s3://')}/u.zarr", *model],
         "UnsupportedStorageError", "lower case"),
        # evaluate and finetune read URLs (tests/test_train_sources.py) but write local outputs only.
        (["evaluate", "--pred", f"{bucket}/x.zarr", "--truth", first, "--out", f"{bucket}/report"],
         "UnsupportedStorageError", "local directory"),
        (["finetune", "--rna", first, "--config", "tiny", "--out", f"{bucket}/bundle", "--steps", "1"],
         "UnsupportedStorageError", "local paths"),
        (["finetune", "--rna", str(local_inputs["h5ad"]), "--protein", "ftp://host/p.h5ad", "--config", "tiny",
          "--out", "bundle", "--steps", "1"], "UnsupportedStorageError", "ftp://"),
    ]
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    for args, error, text in cases:
        done = run_cli(args, s3_server.env, cwd=run_dir)
        assert done.returncode == 2, (args, done.stderr)
        assert f"error: {error}:" in done.stderr and text in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert os.listdir(run_dir) == [], f"{args} wrote {os.listdir(run_dir)}"
    fs.invalidate_cache()
    assert sorted(fs.ls(bucket)) == sorted(u.removeprefix("s3://") for u in (first, second))
    # Python: a pathlib.Path made from a URL is refused, naming the fix, for inputs and outputs.
    for data, out in ((local_inputs["h5ad"], Path(f"{bucket}/py2.zarr")), (Path(first), tmp_path / "p.zarr"),
                      ([first, Path(second)], tmp_path / "coll4")):
        with pytest.raises(UnsupportedStorageError, match="pass the URL as a str"):
            sctranslator.translate(data, TINY_A, PROTEINS, out=out, **COMMON)
    assert not (tmp_path / "p.zarr").exists() and not (tmp_path / "coll4").exists() and not Path("s3:").exists()


def test_h5mu_with_userblock_is_read_from_s3(s3_server, cells: ad.AnnData, tmp_path: Path) -> None:  # noqa: ANN001
    """mudata writes a 512-byte HDF5 userblock: the superblock is found where HDF5 looks for it."""
    import mudata

    path = tmp_path / "rna.h5mu"
    mudata.MuData({"rna": cells[:100].copy()}).write_h5mu(path)
    assert path.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n"  # the case under test: a userblock first
    bucket = s3_server.bucket("h5mu")
    url = upload(s3_server, path, f"{bucket}/rna.h5mu")
    expected = sctranslator.translate(cells[:100].copy(), TINY_A, PROTEINS, **COMMON)
    result = sctranslator.translate(url, TINY_A, PROTEINS, out=tmp_path / "p.zarr", **COMMON)
    np.testing.assert_array_equal(np.asarray(result.X), np.asarray(expected.X))
    # Bytes that are not HDF5 at any of those offsets stay refused.
    junk = tmp_path / "junk.h5mu"
    junk.write_bytes(b"x" * 5000)
    with pytest.raises(StoreError, match="not an HDF5 file"):
        sctranslator.translate(upload(s3_server, junk, f"{bucket}/junk.h5mu"), TINY_A, PROTEINS,
                               out=tmp_path / "j.zarr", **COMMON)


def test_collection_out_on_s3_equals_local_and_respects_ownership(s3_server, local_inputs: dict[str, Path],  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    """`translate A B --out s3://bucket/dir`: one store per input under the prefix plus collection.json,
    each equal to the local single-input run; a re-run skips the finished inputs; objects it did not
    write (at the prefix, or where a store would go) are never replaced."""
    bucket = s3_server.bucket("collout")
    fs = s3_server.filesystem()
    second = upload(s3_server, local_inputs["zarr"], f"{bucket}/in/b.zarr")
    reference = np.asarray(sctranslator.translate(local_inputs["h5ad"], TINY_A, PROTEINS, out=tmp_path / "one.zarr",
                                                  **COMMON).X)
    out = f"{bucket}/preds"
    args = ["translate", str(local_inputs["h5ad"]), second, "--out", out, "--model", str(TINY_A), "--proteins",
            ",".join(PROTEINS), "--normalize", "total_log1p", "--allow-empty-cells", "--quiet"]
    done = run_cli(args, s3_server.env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"Wrote 2 stores (600 cells) to {out}" in done.stdout
    fs.invalidate_cache()
    record = json.loads(fs.cat_file(f"{out}/collection.json"))
    assert [(e["store"], e["status"], e["cells"]) for e in record["inputs"]] == [("rna.zarr", "done", 300),
                                                                                 ("b.zarr", "done", 300)]
    assert json.loads(fs.cat_file(f"{out}/.sctranslator-output.json"))["kind"] == "translate-collection"
    for name in ("rna.zarr", "b.zarr"):
        stored = sctranslator.engine.output_reader.open_predictions(f"{out}/{name}")
        np.testing.assert_array_equal(np.asarray(stored.X), reference)
    assert not (tmp_path / "s3:").exists()
    job = f"{out}/b.zarr/.sctranslator-job/job.json"
    before = fs.cat_file(job)
    again = sctranslator.translate([str(local_inputs["h5ad"]), second], TINY_A, PROTEINS, out=out, **COMMON)
    fs.invalidate_cache()
    assert fs.cat_file(job) == before  # finished inputs are skipped, not recomputed
    np.testing.assert_array_equal(np.asarray(again[1].X), reference)

    # A prefix holding objects we did not write is refused and left as it was.
    fs.pipe_file(f"{bucket}/theirs/data.csv", b"a,b\n")
    refused = run_cli([*args[:3], "--out", f"{bucket}/theirs", *args[5:]], s3_server.env, cwd=tmp_path)
    assert refused.returncode == 2 and "OutputConflictError" in refused.stderr, refused.stderr
    fs.invalidate_cache()
    assert fs.ls(f"{bucket}/theirs", detail=False) == [f"{bucket.removeprefix('s3://')}/theirs/data.csv"]
    # A collection of ours whose store location holds a foreign object: that input fails, the object stays.
    fs.pipe_file(f"{bucket}/mixed/b.zarr", b"not ours")
    fs.pipe_file(f"{bucket}/mixed/.sctranslator-output.json", fs.cat_file(f"{out}/.sctranslator-output.json"))
    mixed = run_cli([*args[:3], "--out", f"{bucket}/mixed", *args[5:]], s3_server.env, cwd=tmp_path)
    assert mixed.returncode == 2 and "CollectionError: 1 of 2 inputs failed" in mixed.stderr, mixed.stderr
    fs.invalidate_cache()
    assert fs.cat_file(f"{bucket}/mixed/b.zarr") == b"not ours"
    statuses = [e["status"] for e in json.loads(fs.cat_file(f"{bucket}/mixed/collection.json"))["inputs"]]
    assert statuses == ["done", "failed"]


@pytest.mark.slow
def test_killed_collection_on_s3_resumes(s3_server, cells: ad.AnnData, tmp_path: Path) -> None:  # noqa: ANN001
    bucket = s3_server.bucket("collresume")
    torch.manual_seed(4)
    model = TranslatorModel(ModelConfig.sized(dim=32, enc_depth=2, dec_depth=1, enc_heads=4, dec_heads=2,
                                              enc_dim_head=16, dec_dim_head=8, max_genes=1024, max_proteins=16))
    bundle = save_model(model, tmp_path / "model")
    small, big = tmp_path / "small.h5ad", tmp_path / "big.h5ad"
    cells[:60].write_h5ad(small)
    many = ad.concat([cells] * 3)
    many.obs_names = [f"cell{i}" for i in range(many.n_obs)]
    many.write_h5ad(big)
    out = f"{bucket}/coll"
    common = ["--model", str(bundle), "--proteins", ",".join(PROTEINS), "--block-cells", "30", "--batch-size",
              "15", "--workers", "1", "--quiet", "--normalize", "total_log1p", "--allow-empty-cells"]
    command = ["translate", str(small), str(big), "--out", out, *common]
    process = subprocess.Popen(cli(*command), env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    fs = s3_server.filesystem()
    markers = f"{out}/big.zarr/.sctranslator-job/blocks"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        fs.invalidate_cache()
        if fs.exists(markers) and len(fs.ls(markers, detail=False)) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the job finished before it could be killed; make it bigger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    fs.invalidate_cache()
    committed = len(fs.ls(markers, detail=False))
    assert [e["status"] for e in json.loads(fs.cat_file(f"{out}/collection.json"))["inputs"]] == ["done", "running"]
    small_job = fs.cat_file(f"{out}/small.zarr/.sctranslator-job/job.json")
    rerun = run_cli(command, {})
    assert rerun.returncode == 0, rerun.stderr
    fs.invalidate_cache()
    assert [e["status"] for e in json.loads(fs.cat_file(f"{out}/collection.json"))["inputs"]] == ["done", "done"]
    assert fs.cat_file(f"{out}/small.zarr/.sctranslator-job/job.json") == small_job  # not recomputed
    job = json.loads(fs.cat_file(f"{out}/big.zarr/.sctranslator-job/job.json"))
    assert job["last_run"]["blocks_skipped"] >= committed >= 3
    for name, path in (("small.zarr", small), ("big.zarr", big)):
        alone = sctranslator.translate(path, bundle, PROTEINS, block_cells=30, batch_size=15, **COMMON)
        stored = sctranslator.engine.output_reader.open_predictions(f"{out}/{name}")
        np.testing.assert_array_equal(np.asarray(stored.X), np.asarray(alone.X))
