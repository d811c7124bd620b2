"""Run `translate` on a synthetic store in a fresh process and print its peak memory (for test_memory).

Usage: python tests/memory_probe.py STORE OUT N_PROTEINS [--write-h5ad PATH]
Prints one JSON line: peak resident set (VmHWM) before and after the job, seconds, and checks on the
returned object, so the parent test can compare runs of different sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux VmHWM; ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tiny_model(n_genes: int, n_proteins: int):  # noqa: ANN201 - torch is imported late on purpose
    import torch

    from sctranslator.model import ModelConfig, TranslatorModel

    torch.manual_seed(0)
    config = ModelConfig.sized(dim=8, enc_depth=1, dec_depth=1, enc_heads=2, dec_heads=2, enc_dim_head=4,
                               dec_dim_head=4, max_genes=n_genes, max_proteins=n_proteins)
    return TranslatorModel(config).eval()


def gene_symbols(count: int, skip: int = 0) -> list[str]:
    """`count` distinct symbols of the model vocabulary that map back onto distinct tokens."""
    import numpy as np

    from sctranslator.vocab import map_genes, map_proteins, token_symbols

    names = [str(s) for s in token_symbols(np.arange(1, 20_000)) if str(s).replace("-", "").isalnum()]
    names = names[skip:skip + 4 * count]
    tokens = map_proteins(names).token_ids if skip else map_genes(names).token_ids
    chosen, seen = [], set()
    for name, token in zip(names, tokens, strict=True):
        if token > 0 and token not in seen:
            chosen.append(name)
            seen.add(int(token))
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"only {len(chosen)} usable symbols")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("out")
    parser.add_argument("n_proteins", type=int)
    parser.add_argument("--n-genes", type=int, default=32)
    parser.add_argument("--write-h5ad")
    args = parser.parse_args()

    import numpy as np

    import sctranslator

    proteins = gene_symbols(args.n_proteins, skip=1000)
    model = tiny_model(args.n_genes, args.n_proteins)
    before = peak_rss_bytes()
    start = time.perf_counter()
    result = sctranslator.translate(args.store, model, proteins, out=args.out, workers=2, block_cells=8192,
                                    quiet=True, write_h5ad=args.write_h5ad)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    sample = np.asarray(result.X[-3:])
    print(json.dumps({"peak_before_job": before, "peak": peak, "seconds": seconds, "shape": list(result.shape),
                      "x_type": f"{type(result.X).__module__}.{type(result.X).__name__}",
                      "finite": bool(np.isfinite(sample).all()),
                      "matrix_bytes": int(result.shape[0]) * int(result.shape[1]) * 4}))


if __name__ == "__main__":
    main()
