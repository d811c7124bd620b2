"""Run `finetune` on a synthetic paired store in a fresh process and print its peak memory (for test_train_memory).

Usage: python tests/train_memory_probe.py STORE OUT --n-genes G --n-proteins P --steps S
Prints one JSON line: peak resident set (VmHWM) before and after the run, seconds, and what the
run trained on, so that the parent test can compare runs of different sizes.
"""

from __future__ import annotations

import argparse
import json
import time

from memory_probe import peak_rss_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("out")
    parser.add_argument("--n-genes", type=int, required=True)
    parser.add_argument("--n-proteins", type=int, required=True)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    import torch

    from sctranslator.train import finetune

    torch.set_num_threads(1)
    before = peak_rss_bytes()
    start = time.perf_counter()
    model = finetune(args.store, config="tiny", config_overrides={"dim": 8, "enc_dim_head": 4, "dec_dim_head": 4},
                     out=args.out, steps=args.steps, batch_size=32, val_count=256, val_every=args.steps,
                     block_cells=1024, shuffle_blocks=4, quiet=True, workers=1)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_before_job": before, "peak": peak_rss_bytes(), "seconds": seconds,
                      "steps": model.training_outcome.steps_done,
                      "val_cells": len(model.validation.obs_names),
                      "n_genes": len(model.panel["genes"]["token_ids"]),
                      "n_proteins": len(model.panel["proteins"]["names"])}))


if __name__ == "__main__":
    main()
