"""The parallelism rule (engine.threads): cores from affinity and cgroup quotas, and never oversubscribed."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pytest
from datafiles import PBMC, TINY_A

import sctranslator
from sctranslator.engine.threads import available_cpus, cell_flop, cgroup_cpu_limit, choose_parallelism
from sctranslator.model import ModelConfig


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_read_along_the_process_path(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    self_cgroup = tmp_path / "self"
    _write(self_cgroup, "0::/job/step\n")
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "job" / "cpu.max", "300000 100000\n")  # the parent allows 3 cores
    _write(root / "job" / "step" / "cpu.max", "150000 100000\n")  # the process's own cgroup 1.5
    assert cgroup_cpu_limit(root, self_cgroup) == pytest.approx(1.5)
    _write(root / "job" / "step" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, self_cgroup) == pytest.approx(3.0)
    cpus, why = available_cpus(set(range(8)), root, self_cgroup)
    assert (cpus, "quota of 3 cores" in why) == (3, True)
    # 1.5 cores is one busy thread, never two throttled ones; a mask smaller than the quota wins.
    _write(root / "job" / "step" / "cpu.max", "150000 100000\n")
    assert available_cpus(set(range(8)), root, self_cgroup)[0] == 1
    assert available_cpus({0}, root, self_cgroup)[0] == 1
    _write(root / "job" / "cpu.max", "max 100000\n")
    _write(root / "job" / "step" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, self_cgroup) is None
    assert available_cpus({0, 1, 5}, root, self_cgroup) == (3, "3 CPUs in the affinity mask")


def test_cgroup_v1_cfs_quota_and_a_container_root(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    self_cgroup = tmp_path / "self"
    _write(self_cgroup, "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    # Inside a container the process's path does not exist under the mount: the root's files apply.
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(root, self_cgroup) == pytest.approx(2.0)
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "50000\n")
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(root, self_cgroup) == pytest.approx(0.5)
    assert available_cpus(set(range(4)), root, self_cgroup)[0] == 1  # at least one
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")  # unlimited
    assert cgroup_cpu_limit(root, self_cgroup) == pytest.approx(2.0)
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "missing") is None


FULL = ModelConfig()  # the published checkpoints' configuration
TINY = ModelConfig.sized(dim=16, enc_heads=2, enc_dim_head=8, dec_heads=2, dec_dim_head=8, max_genes=64,
                         max_proteins=16)


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
def test_computing_blocks_times_threads_never_exceed_the_cores(cpus: int) -> None:
    for config, tokens in [(FULL, 16_200), (FULL, 4_000), (TINY, 64)]:
        flop = cell_flop(config, tokens)
        for remote, device in [(False, "cpu"), (False, "cuda"), (True, "cpu")]:  # here, a GPU, a server (triton)
            for concurrent in (None, 1, 2, 4, 32):
                rule = choose_parallelism(remote=remote, device=device, flop_per_cell=flop, cpus=cpus,
                                          concurrent=concurrent)
                computing = rule.compute_slots or rule.workers
                if device == "cpu" and not remote:
                    assert computing * rule.threads <= cpus, (config, remote, concurrent, rule)
                else:  # the arithmetic runs on the GPU or the server: one CPU thread per block at most
                    assert rule.threads == 1 or rule.workers * rule.threads <= cpus, rule
                assert rule.cpus == cpus and rule.why


def test_the_full_size_model_computes_one_block_with_every_core_while_the_next_is_prepared() -> None:
    flop = cell_flop(FULL, 16_200)
    assert 50e9 < flop < 150e9  # ~84 GFLOP measured by hand for a collapsed 16k-gene cell (issue 22)
    rule = choose_parallelism(flop_per_cell=flop, cpus=2)
    assert (rule.workers, rule.threads, rule.compute_slots) == (2, 2, 1)
    assert "while the next is read and prepared" in rule.why
    # A dask worker with --nthreads 4 on 8 cores: 4 tasks read and prepare, one computes on all 8.
    worker = choose_parallelism(flop_per_cell=flop, cpus=8, concurrent=4)
    assert (worker.workers, worker.threads, worker.compute_slots) == (4, 8, 1)
    # A tiny model: one thread per block, a block per core; on a worker every task computes.
    tiny = choose_parallelism(flop_per_cell=cell_flop(TINY, 64), cpus=4)
    assert (tiny.workers, tiny.threads, tiny.compute_slots) == (4, 1, None)
    assert choose_parallelism(flop_per_cell=cell_flop(TINY, 64), cpus=4,
                              concurrent=4).compute_slots is None
    asked = choose_parallelism(flop_per_cell=flop, cpus=8, workers=3)
    assert (asked.workers, asked.threads) == (3, 2)


def test_translate_records_and_uses_the_rule(tmp_path: Path) -> None:
    import torch

    rna = ad.read_h5ad(PBMC / "rna.h5ad")[:40].copy()
    result = sctranslator.translate(rna, TINY_A, ["CD3", "CD4"], allow_empty_cells=True, block_cells=10)
    recorded = result.uns["sctranslator"]["settings"]["parallelism"]
    cpus = available_cpus()[0]
    assert recorded["cpus"] == cpus
    assert recorded["compute_slots"] * recorded["threads"] <= cpus
    assert recorded["batch_size"] == result.uns["sctranslator"]["settings"]["batch_size"]
    assert recorded["why"].startswith("one cell's forward is")
    assert torch.get_num_threads() == recorded["threads"]  # the torch backend was built with the rule's threads
    given = sctranslator.translate(rna, TINY_A, ["CD3", "CD4"], allow_empty_cells=True, workers=1,
                                   out=tmp_path / "one.zarr")
    settings = given.uns["sctranslator"]["settings"]["parallelism"]
    assert (settings["workers"], settings["threads"]) == (1, cpus)
    assert torch.get_num_threads() == cpus


def test_a_dask_worker_divides_only_the_cores_its_nthreads_give_it():
    # `dask worker --nworkers N --nthreads 1` on an N-core host: each worker must compute on one thread,
    # not assume the whole host is its own (N workers x N threads).
    from types import SimpleNamespace

    from sctranslator.engine.pipeline import _worker_parallelism

    job = SimpleNamespace(backend=SimpleNamespace(kind="torch", device="cpu"), flop_per_cell=84e9)
    alone = _worker_parallelism(job, 1)
    assert alone.threads == 1 and alone.cpus == 1
    host = available_cpus()[0]
    shared = _worker_parallelism(job, 2)
    assert shared.cpus == min(2, host)
    assert shared.threads * (shared.compute_slots or shared.workers) <= min(2, host)
