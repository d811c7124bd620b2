"""The output store: an AnnData-layout Zarr store whose X is filled block by block.

Each block is written into its own chunk rows and then recorded by an atomically created marker
file, so a re-run after any interruption (kill -9 included) skips committed blocks, recomputes
only the rest, and never writes a row twice. The store itself is created under a temporary name
and renamed into place, so it either exists complete with its job record or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import zarr

from sctranslator.engine.predictions import TemporaryStore, open_predictions
from sctranslator.errors import StoreError

log = logging.getLogger(__name__)

JOB_DIR = ".sctranslator-job"
JOB_FILE = "job.json"
EMBEDDING_KEY = "X_sctranslator"


def block_ranges(n_obs: int, block_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + block_rows, n_obs)) for start in range(0, n_obs, block_rows)]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class ZarrSink:
    """Where predictions go. Picklable: holds only paths and sizes."""

    path: str
    n_obs: int
    n_outputs: int
    block_rows: int
    embedding_dim: int = 0  # > 0: obsm['X_sctranslator'] is written block by block beside X

    @property
    def job_dir(self) -> Path:
        return Path(self.path) / JOB_DIR

    # -- creation and resume -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, identity: dict[str, Any], obs: pd.DataFrame, var: pd.DataFrame,
             uns: dict[str, Any], block_rows: int, overwrite: bool = False, embedding_dim: int = 0) -> ZarrSink:
        """Create the store, or reopen it for resume when it was made by the same job."""
        path = Path(path)
        if path.exists():
            recorded = cls.read_identity(path)
            if recorded is not None and recorded.get("identity") == identity and not overwrite:
                block_rows = int(recorded["block_rows"])
                sink = cls(str(path), len(obs), var.shape[0], block_rows, embedding_dim)
                log.info("resuming %s: %d of %d blocks already committed", path, len(sink.committed()),
                         len(sink.blocks()))
                return sink
            if not overwrite:
                what = ("was written by a different model, input or settings" if recorded is not None
                        else "exists and is not a sctranslator output")
                raise StoreError(f"{path} {what}; refusing to mix results. Choose another --out, or pass "
                                 "--overwrite to replace it.")
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        sink = cls(str(path), len(obs), var.shape[0], block_rows, embedding_dim)
        sink._create(identity, obs, var, uns)
        return sink

    @staticmethod
    def read_identity(path: Path) -> dict[str, Any] | None:
        job_file = path / JOB_DIR / JOB_FILE
        if not job_file.exists():
            return None
        try:
            return json.loads(job_file.read_text())
        except json.JSONDecodeError:
            return None

    def _create(self, identity: dict[str, Any], obs: pd.DataFrame, var: pd.DataFrame, uns: dict[str, Any]) -> None:
        final = Path(self.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
        if staging.exists():
            shutil.rmtree(staging)
        skeleton = ad.AnnData(obs=obs, var=var, uns=uns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # anndata's note about the zarr v2 default
            skeleton.write_zarr(staging)
        root = zarr.open_group(str(staging), mode="a")
        x = root.create_array("X", shape=(self.n_obs, self.n_outputs), chunks=(self.block_rows, self.n_outputs),
                              dtype="float32", fill_value=np.nan)
        x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        if self.embedding_dim:
            emb = root["obsm"].create_array(EMBEDDING_KEY, shape=(self.n_obs, self.embedding_dim),
                                            chunks=(self.block_rows, self.embedding_dim), dtype="float32",
                                            fill_value=np.nan)
            emb.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        zarr.consolidate_metadata(str(staging))
        (staging / JOB_DIR / "blocks").mkdir(parents=True)
        record = {"identity": identity, "block_rows": self.block_rows, "n_obs": self.n_obs,
                  "n_outputs": self.n_outputs, "complete": False}
        _atomic_write_text(staging / JOB_DIR / JOB_FILE, json.dumps(record, indent=2, default=str))
        os.replace(staging, final)

    # -- blocks --------------------------------------------------------------------------------
    def blocks(self) -> list[tuple[int, int]]:
        return block_ranges(self.n_obs, self.block_rows)

    def _marker(self, index: int) -> Path:
        return self.job_dir / "blocks" / f"{index:09d}"

    def committed(self) -> set[int]:
        names = os.listdir(self.job_dir / "blocks")
        return {int(name) for name in names if name.isdigit()}

    def pending(self) -> list[int]:
        done = self.committed()
        return [i for i in range(len(self.blocks())) if i not in done]

    def write_block(self, index: int, predictions: np.ndarray, embeddings: np.ndarray | None = None) -> None:
        start, stop = self.blocks()[index]
        if predictions.shape != (stop - start, self.n_outputs):
            raise StoreError(f"block {index} has shape {predictions.shape}, expected {(stop - start, self.n_outputs)}")
        x = zarr.open_array(str(Path(self.path) / "X"), mode="r+")
        x[start:stop] = predictions.astype(np.float32, copy=False)
        if self.embedding_dim:
            if embeddings is None or embeddings.shape != (stop - start, self.embedding_dim):
                raise StoreError(f"block {index}: embeddings missing or mis-shaped")
            emb = zarr.open_array(str(Path(self.path) / "obsm" / EMBEDDING_KEY), mode="r+")
            emb[start:stop] = embeddings.astype(np.float32, copy=False)
        # The marker is created only after the rows are written: a kill in between means redo.
        _atomic_write_text(self._marker(index), f"{start} {stop}\n")

    def finish(self, extra: dict[str, Any] | None = None) -> None:
        missing = self.pending()
        if missing:
            raise StoreError(f"{self.path}: blocks {missing[:10]} are not committed; re-run the same command")
        record = json.loads((self.job_dir / JOB_FILE).read_text())
        record["complete"] = True
        record.update(extra or {})
        _atomic_write_text(self.job_dir / JOB_FILE, json.dumps(record, indent=2, default=str))

    def read(self, owner: TemporaryStore | None = None) -> ad.AnnData:
        """The finished store as an AnnData whose X stays on disk (see `open_predictions`)."""
        return open_predictions(self.path, owner=owner)
