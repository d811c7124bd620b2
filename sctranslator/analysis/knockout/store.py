"""The knockout job's block results: an `engine.block_results.BlockResults` ledger beside the output."""

from __future__ import annotations

from sctranslator.engine.block_results import BlockResults, job_dir_for

KnockoutStore = BlockResults

__all__ = ["KnockoutStore", "job_dir_for"]
