"""Cells per model call from free device memory: a memory model of the torch forward pass.

The model counts, per cell, the activation elements that are alive at once at the peak of each
stage of `TorchBackend`'s forward (encoder input, encoder block, translator, decoder block), read
off the code in model/performer_blocks.py, model/favor_attention.py and model/translator.py. With N encoder
tokens (the padding collapse computes n real tokens + 1; sctranslator.graph.token_layout), D = dim,
I = heads x dim_head, F = random features per head, M = ff_mult x D:

- attention, at its peak (the output division): the block input and its LayerNorm (2 ND), the
  q, k, v projections and the masked v (held by the forward's locals: 3 NI), the query and key
  features (2 N H F), the numerator and the divided output (2 NI), plus per-token maxima and
  normalisers (3 N H) -> 2 ND + 5 NI + 2 NHF + 3 NH;
- feed-forward: the block input, the residual sum, its LayerNorm (3 ND), w1's output and the
  GELU's (2 NM);
- encoder input: to_vector, the position embedding and their sum (3 ND); during the blocks the
  collapsed path also keeps the real tokens' embedding (+ ND on the block's figure);
- translator: the encodings, their transposed copy (2 ND) and the hidden widths (2 D h_1 + D P);
- decoder: the same block terms over P protein tokens, plus the encodings and the translated
  sequence kept alive across the protein windows (N D + P D).

Every term is an activation tensor of the compute dtype; the inputs (B, L) float32 values are
added once. Weights and the collapse's precomputed tensors are not per cell: they are already
allocated when free memory is read. tests/test_gpu_pipeline.py checks the per-cell figure
against the peak of live tensor bytes measured by the PyTorch profiler on a tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sctranslator.errors import InputDataError
from sctranslator.model.config import ModelConfig

# Bytes per activation element. Reduced precision keeps the activations in fp32 (the residual
# stream, the attention features and sums: sctranslator.model.precision); only the dense layers'
# operands are bf16/fp16 copies, temporaries beside the fp32 tensors.
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 4, "bf16": 4}
# Kept back from the free memory: cuBLAS / cuDNN workspaces, kernels' scratch, fragmentation.
DEFAULT_MARGIN = 0.80
DEFAULT_RESERVE_BYTES = 1 << 30
MAX_CELLS_PER_CALL = 4096


def _block_elements(tokens: int, dim: int, heads: int, dim_head: int, nb_features: int, ff_mult: int) -> int:
    """Peak live activation elements of one PerformerBlock over `tokens` tokens (one cell)."""
    inner = heads * dim_head
    attention = 2 * tokens * dim + 5 * tokens * inner + 2 * tokens * heads * nb_features + 3 * tokens * heads
    feed_forward = 3 * tokens * dim + 2 * tokens * ff_mult * dim
    return max(attention, feed_forward)


@dataclass(frozen=True)
class ForwardMemory:
    """Per-cell device bytes of one forward pass, by stage (see the module docstring).

    Parameters
    ----------
    encoder_input : int
        Peak bytes of the encoder's input stage (gene embeddings and their sum).
    encoder_block : int
        Peak bytes inside one encoder block.
    translator : int
        Peak bytes of the sequence translator.
    decoder_block : int
        Peak bytes inside one decoder block.
    inputs : int
        Bytes of the staged ``(B, L)`` float32 values.
    """

    encoder_input: int
    encoder_block: int
    translator: int
    decoder_block: int
    inputs: int  # the staged (B, L) float32 values

    @property
    def per_cell(self) -> int:
        """Peak bytes per cell: the largest stage plus the inputs."""
        return max(self.encoder_input, self.encoder_block, self.translator, self.decoder_block) + self.inputs


def forward_memory(config: ModelConfig, tokens: int, precision: str = "fp32") -> ForwardMemory:
    """The per-cell device memory of the torch forward with `tokens` encoder tokens computed.

    Parameters
    ----------
    config : ModelConfig
        The model's sizes.
    tokens : int
        N, the encoder's computed tokens: ``TokenLayout.tokens`` (n real + 1 with padding), or L
        without the collapse.
    precision : str
        fp32, fp16 or bf16 (the activations' dtype).

    Returns
    -------
    ForwardMemory
        Bytes per cell, by stage.

    Raises
    ------
    InputDataError
        `tokens` outside 1..L, or an unknown precision.
    """
    if precision not in BYTES_PER_ELEMENT:
        raise InputDataError(f"unknown precision {precision!r}; choose one of {', '.join(BYTES_PER_ELEMENT)}")
    if not 1 <= tokens <= config.max_genes:
        raise InputDataError(f"tokens must be within 1..{config.max_genes} (the model's L), got {tokens}")
    size = BYTES_PER_ELEMENT[precision]
    dim, proteins = config.dim, config.max_proteins
    # + N D: the collapsed path also keeps the real tokens' embedding alive beside the blocks' input.
    encoder_block = _block_elements(tokens, dim, config.enc_heads, config.enc_dim_head, config.enc_nb_features,
                                    config.ff_mult) + tokens * dim
    widths = config.translator_layer_widths[1:]  # fc0's output onwards
    hidden = max(widths[:-1], default=0)
    translator = 2 * tokens * dim + 2 * dim * hidden + dim * proteins
    decoder_block = (_block_elements(proteins, dim, config.dec_heads, config.dec_dim_head, config.dec_nb_features,
                                     config.ff_mult) + tokens * dim + proteins * dim)
    return ForwardMemory(encoder_input=3 * tokens * dim * size, encoder_block=encoder_block * size,
                         translator=translator * size, decoder_block=decoder_block * size,
                         inputs=config.max_genes * 4)


def cells_per_call(config: ModelConfig, tokens: int, precision: str, available_bytes: int, *,
                   margin: float = DEFAULT_MARGIN, reserve_bytes: int = DEFAULT_RESERVE_BYTES,
                   limit: int = MAX_CELLS_PER_CALL) -> int:
    """Cells per model call that fit `available_bytes` of device memory (at least 1, at most `limit`).

    One forward is on the device at a time (the torch backend launches forwards under a lock), plus the
    next batch's staged inputs.

    Parameters
    ----------
    config : ModelConfig
        The model's sizes.
    tokens : int
        Encoder tokens per cell.
    precision : str
        The compute precision.
    available_bytes : int
        Free device memory.
    margin : float
        Share of what is left after `reserve_bytes` that may be used.
    reserve_bytes : int
        Bytes kept free.
    limit : int
        Most cells per call.

    Returns
    -------
    int
        Cells per call.
    """
    per_cell = forward_memory(config, tokens, precision).per_cell
    usable = margin * max(0, available_bytes - reserve_bytes)
    return int(max(1, min(limit, usable // (per_cell + config.max_genes * 4))))


def available_device_bytes(device: str) -> int:
    """Bytes a new forward can use on a CUDA device.

    The driver's free memory plus what PyTorch's caching allocator holds reserved but unused
    (mem_get_info does not count that as free).

    Parameters
    ----------
    device : str
        "cuda" or "cuda:N".

    Returns
    -------
    int
        Bytes.
    """
    import torch

    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    free, _total = torch.cuda.mem_get_info(index)
    return int(free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))


def batch_cells_for_device(model: Any, batch: Any, device: Any, *, collapsed: bool, precision: str = "fp32") -> int:
    """Cells per call for a model on a CUDA device, for the gene layout of `batch`.

    Parameters
    ----------
    model : TranslatorModel
        The model.
    batch : Batch
        A batch of the job (its gene layout sets N).
    device : torch.device or str
        The CUDA device.
    collapsed : bool
        The backend computes the padding once (N = the layout's tokens, else L).
    precision : str
        The backend's compute precision.

    Returns
    -------
    int
        Cells per call.
    """
    from sctranslator.graph.token_layout import TokenLayout

    config = model.config
    tokens = TokenLayout.for_layout(batch.gene_ids, batch.gene_mask).tokens if collapsed else config.max_genes
    return cells_per_call(config, tokens, precision, available_device_bytes(str(device)))
