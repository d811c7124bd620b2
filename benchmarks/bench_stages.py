"""GFLOP/s per stage of one collapsed full-size cell against the matrix-multiply rates of that stage's shapes.

One thread, CPU seconds of this thread (`time.thread_time()`), the smallest of --repeats runs: on a
machine shared with other work that is the figure least disturbed by the others (wall time is not).
Stages, as the default path runs them on the first cell of the input (published configuration,
random weights, 10 proteins): one encoder block (chunked attention + feed-forward, model/fused.py),
the translator (fc0 over the collapsed tokens, then fc1), the decoder (whole, and at the 10 real
proteins only, model/selected_outputs.py). Each stage runs twice, interleaved: as the default path
runs it (linear layers through oneDNN with packed weights, model/packed_linear.py) and with those
products back on `torch.mm` (MKL; `plain_matmuls()`). Beside them, the rates of `torch.mm` and of
oneDNN's linear on the stage's main matrix shapes, measured the same way in the same run: the
ceilings that stage could reach with each library on one core.

Run: python benchmarks/bench_stages.py [--input 4k|16k] [--repeats 5] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_fullsize import TEN, cell, prepared  # noqa: E402

from sctranslator.engine.backends import TorchBackend  # noqa: E402
from sctranslator.model import ModelConfig, TranslatorModel, packed_linear  # noqa: E402
from sctranslator.model.selected_outputs import decode_selected  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def thread_cpu() -> float:
    return time.thread_time()  # CLOCK_THREAD_CPUTIME_ID: finer than getrusage's RUSAGE_THREAD ticks


def least_cpu(run: Callable[[], object], repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = thread_cpu()
        run()
        best = min(best, thread_cpu() - start)
    return best


def block_flop(config: ModelConfig, tokens: int) -> float:
    """One Performer block over `tokens` tokens: projections, feature maps, contexts, feed-forward."""
    inner = config.enc_heads * config.enc_dim_head
    per_token = 2 * (4 * config.dim * inner + 2 * inner * config.enc_nb_features
                     + 2 * config.enc_nb_features * inner + 2 * config.ff_mult * config.dim * config.dim)
    return float(per_token * tokens)


def mm_rate(shapes: list[tuple[int, int, int]], repeats: int) -> float:
    """GFLOP/s of torch.mm over (m, k, n) shapes together."""
    pairs = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flop = sum(2 * m * k * n for m, k, n in shapes)
    return flop / least_cpu(lambda: [a @ b for a, b in pairs], repeats) / 1e9


def onednn_rate(shapes: list[tuple[int, int, int]], repeats: int) -> float:
    """GFLOP/s of oneDNN's linear with a packed weight over (m, k, n) shapes together (NaN without oneDNN)."""
    if not packed_linear.enabled(torch.device("cpu")):
        return float("nan")
    layers = [(torch.randn(m, k), packed_linear.pack(torch.randn(n, k))) for m, k, n in shapes]
    flop = sum(2 * m * k * n for m, k, n in shapes)
    return flop / least_cpu(lambda: [layer(x) for x, layer in layers], repeats) / 1e9


def without_onednn(run: Callable[[], object]) -> Callable[[], object]:
    def plain() -> object:
        with packed_linear.plain_matmuls():
            return run()
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", choices=("4k", "16k"), default="4k")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig()
    model = TranslatorModel(config).eval()
    data = args.shared / "data"
    path = data / ("pbmc10k_cite_10x" if args.input == "4k" else "pbmc_eccite_mimitou2019") / "rna.h5ad"
    batch, _ = prepared(path, model, TEN, 1)
    torch.set_num_threads(1)  # again: Numba's preparation kernels reset the OpenMP threads oneDNN uses
    backend = TorchBackend(model, selected_outputs=True)  # as translate builds it
    collapse = backend._collapse_for(batch)
    assert collapse is not None
    one = cell(batch, 0)
    values = torch.from_numpy(one.values).index_select(1, collapse.real_positions)
    tokens = collapse.tokens
    widths = config.translator_layer_widths
    proteins = torch.from_numpy(one.protein_ids[0])[None]
    mask = torch.from_numpy(one.protein_mask[0])
    keep = torch.nonzero(mask).reshape(-1)
    real = int(keep.numel())
    rows = []
    with torch.inference_mode():
        encoded = collapse.encode_real(model, values)
        translated = collapse.translate(model, encoded)
        h = model.enc.to_vector(values.unsqueeze(-1)) + model.enc.pos_emb(collapse.gene_ids)
        h = torch.cat([h, (model.enc.to_vector.bias + model.enc.pos_emb.weight[0]).expand(1, 1, -1)], dim=1)
        token_mask = torch.ones(1, tokens, dtype=torch.bool)
        token_mask[0, -1] = False
        inner = config.enc_heads * config.enc_dim_head
        attention_shapes = [(512, config.dim, inner)] * 4 + [(512 * config.enc_heads, config.enc_dim_head,
                                                                config.enc_nb_features)] * 2
        ff_shapes = [(512, config.dim, config.ff_mult * config.dim), (512, config.ff_mult * config.dim, config.dim)]
        stages = [
            (f"encoder block, {tokens:,} tokens (attention + feed-forward)", block_flop(config, tokens),
             lambda: model.enc.layers[0](h, token_mask, collapse.key_counts), attention_shapes + ff_shapes),
            (f"translator, ({config.dim} x {tokens:,}) x ({tokens:,} x {widths[1]:,}), then fc1",
             2.0 * config.dim * (tokens * widths[1] + widths[1] * widths[2]),
             lambda: collapse.translate(model, encoded),
             [(config.dim, tokens, widths[1]), (config.dim, widths[1], widths[2])]),
            (f"decoder, whole ({config.max_proteins:,} tokens x {config.dec_depth} layers)",
             config.dec_depth * block_flop(config, config.max_proteins),
             lambda: model.decode(translated, proteins, mask.expand(1, -1)),
             [(config.max_proteins, config.dim, inner)] * 4),
            (f"decoder at the {real} real proteins (last layer: keys of all, the rest at {real})",
             block_flop(config, config.max_proteins) + 2.0 * config.max_proteins * (config.dim * inner + inner
                                                                                   * config.dec_nb_features),
             lambda: decode_selected(model, translated, proteins, mask, keep),
             [(config.max_proteins, config.dim, inner)] * 4),
        ]
        whole = least_cpu(lambda: backend.predict(one), args.repeats)
        whole_plain = least_cpu(without_onednn(lambda: backend.predict(one)), args.repeats)
        for name, flop, run, shapes in stages:
            seconds = least_cpu(run, args.repeats)
            plain = least_cpu(without_onednn(run), args.repeats)
            rate = flop / seconds / 1e9
            ceiling, onednn = mm_rate(shapes, args.repeats), onednn_rate(shapes, args.repeats)
            rows.append(f"| {name} | {flop / 1e9:.2f} | {seconds:.3f} | {rate:.0f} | {plain:.3f} | {ceiling:.0f} | "
                        f"{onednn:.0f} | {rate / max(ceiling, onednn):.0%} |")
    print(f"{args.input} input, 1 thread, smallest CPU seconds of {args.repeats}; the whole default forward of one "
          f"cell: {whole:.3f} s ({whole_plain:.3f} s with MKL products); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs\n")
    print("| stage | GFLOP | CPU s | GFLOP/s | CPU s, MKL products | torch.mm (MKL) rate of its shapes, GFLOP/s | "
          "oneDNN rate of its shapes, GFLOP/s | share of the better rate |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
