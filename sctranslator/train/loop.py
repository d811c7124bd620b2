"""The training loop: seeded data order, accumulation, mixed precision, DDP, validation, resume."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sctranslator.errors import InputDataError
from sctranslator.kernels import pearson_columns
from sctranslator.model import TranslatorModel
from sctranslator.options import TrainOptions  # declared there with its command-line help
from sctranslator.train import checkpoint
from sctranslator.train.distributed import Processes, any_process, barrier, gather_objects
from sctranslator.train.metrics_log import MetricsLog
from sctranslator.train.schedule import lr_factor
from sctranslator.train.stream import Batch, TrainStream
from sctranslator.util.progress import progress_bar

log = logging.getLogger(__name__)

@dataclass
class Outcome:
    """What a finished run leaves behind (besides the weights).

    Parameters
    ----------
    steps_done : int
        Optimizer steps taken.
    stopped_early : bool
        Stopped by patience.
    interrupted : bool
        Stopped by stop_after; resume to finish.
    best_step : int or None
        The step of the best validation.
    val_metrics : dict
        Validation metrics of the weights returned.
    val_predictions : numpy.ndarray or None
        ``(n_val, n_proteins)`` predictions of the weights returned.
    val_targets : numpy.ndarray or None
        ``(n_val, n_proteins)`` targets; NaN where the cell's dataset did not measure the protein.
    seconds : float
        Wall time of the run.
    """

    steps_done: int
    stopped_early: bool
    interrupted: bool  # stopped by stop_after; resume to finish
    best_step: int | None
    val_metrics: dict[str, Any] = field(default_factory=dict)  # of the weights returned
    val_predictions: np.ndarray | None = None  # (n_val, n_proteins) of the weights returned
    val_targets: np.ndarray | None = None  # (n_val, n_proteins); NaN where the cell's dataset did not measure
    seconds: float = 0.0


def total_steps(options: TrainOptions, n_train: int, world: int) -> int:
    """Optimizer steps of a run: `steps`, or `epochs` over the training cells.

    Parameters
    ----------
    options : TrainOptions
        The training options.
    n_train : int
        Training cells.
    world : int
        Processes.

    Returns
    -------
    int
        At least 1.
    """
    if options.steps is not None:
        return int(options.steps)
    per_step = options.batch_size * options.accumulation * world
    return max(1, math.ceil(float(options.epochs) * n_train / per_step))


def apply_freeze(model: TranslatorModel, freeze: tuple[str, ...]) -> None:
    """Stop gradients to the chosen parts; the unused value/output heads are never trained.

    Parameters
    ----------
    model : TranslatorModel
        The model, changed in place.
    freeze : tuple of str
        Parts: embeddings, encoder, translator, decoder.
    """
    parts = {
        "embeddings": [model.enc.pos_emb, model.dec.pos_emb],
        "encoder": [model.enc],
        "translator": [model.translator],
        "decoder": [model.dec],
    }
    for p in model.parameters():
        p.requires_grad_(True)
    for name in freeze:
        for module in parts[name]:
            for p in module.parameters():
                p.requires_grad_(False)
    # The encoder's to_out and the decoder's to_vector take no part in the forward pass (DDP
    # would otherwise wait for their gradients).
    for p in [*model.enc.to_out.parameters(), *model.dec.to_vector.parameters()]:
        p.requires_grad_(False)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real protein positions (the original's loss).

    Parameters
    ----------
    pred : torch.Tensor
        ``(n, P)`` predictions.
    target : torch.Tensor
        ``(n, P)`` scaled targets.
    mask : torch.Tensor
        bool ``(n, P)``: real, measured positions.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    weight = mask.to(pred.dtype)
    return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp_min(1)


class Trainer:
    """One training run: optimizer, schedule, validation, checkpoints and early stopping.

    Parameters
    ----------
    model : TranslatorModel
        The model to train (moved to the processes' device).
    stream : TrainStream
        The training and held-out cells.
    options : TrainOptions
        How to train.
    processes : Processes
        This process's rank, world and device.
    work_dir : pathlib.Path
        Where checkpoints go.
    metrics : MetricsLog
        Where each validation's metrics go.
    fingerprint : str
        Identity of the run's inputs and settings (a checkpoint of another run is refused).

    Raises
    ------
    InputDataError
        Fewer training cells than one batch.
    """
    def __init__(self, model: TranslatorModel, stream: TrainStream, options: TrainOptions, processes: Processes,
                 work_dir: Path, metrics: MetricsLog, fingerprint: str):
        self.model = model.to(processes.device)
        self.stream = stream
        self.options = options
        self.processes = processes
        self.work_dir = work_dir
        self.metrics = metrics
        self.fingerprint = fingerprint
        self.device = processes.device
        self.n_proteins = stream.n_proteins
        self.micro_cells = options.batch_size * processes.world  # cells per micro-batch, all processes
        if stream.n_train < self.micro_cells:
            raise InputDataError(f"{stream.n_train} training cells are fewer than one batch "
                                 f"({options.batch_size} x {processes.world} processes)")
        self.total = total_steps(options, stream.n_train, processes.world)
        self.val_every = options.val_every or max(1, self.total // 10)
        self.checkpoint_every = options.checkpoint_every or self.val_every
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
        warmup = options.warmup_steps if options.warmup_steps is not None else max(1, self.total // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(self.total, warmup, options.decay, options.min_lr_ratio))
        self.wrapped: nn.Module = model
        if processes.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids)
        # Early-stopping state (saved in checkpoints with the stream's position in the data order).
        self.step = 0
        self.best_metric = -math.inf
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_validations = 0
        self.train_loss_sum = 0.0
        self.train_loss_count = 0
        self.val_truth: np.ndarray | None = None

    @property
    def epoch(self) -> int:
        """The current epoch (0-based)."""
        return self.stream.epoch

    # --- data order --------------------------------------------------------------------------
    def next_micro_batch(self, micro: int) -> Batch:
        """This process's share of the next micro-batch (the partial tail of an epoch is skipped).

        Parameters
        ----------
        micro : int
            The micro-batch's index within the optimizer step.

        Returns
        -------
        Batch
            The cells' inputs and targets.
        """
        lo = self.processes.rank * self.options.batch_size
        # Gene subsets follow (seed, step, micro-batch, rank): the same on resume.
        rng = np.random.default_rng([self.options.seed, self.step, micro, self.processes.rank, 7])
        return self.stream.take(self.micro_cells, lo, lo + self.options.batch_size, rng)

    def batch_tensors(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """A batch as tensors on the training device.

        Parameters
        ----------
        batch : Batch
            The cells.

        Returns
        -------
        tuple of torch.Tensor
            values, gene ids, protein ids, gene mask, protein mask, targets.
        """
        stream = self.stream
        size = batch.values.shape[0]
        device = self.device
        if batch.gene_ids is not None:  # a random gene subset per cell
            genes = torch.from_numpy(batch.gene_ids).to(device)
            gene_mask = torch.from_numpy(batch.gene_mask).to(device)
        else:
            genes = torch.from_numpy(stream.gene_ids).to(device).expand(size, -1)
            gene_mask = torch.from_numpy(stream.gene_mask).to(device).expand(size, -1)
        protein_mask = (torch.from_numpy(stream.protein_mask).to(device)
                        & torch.from_numpy(batch.protein_mask).to(device))
        return (torch.from_numpy(np.ascontiguousarray(batch.values)).to(device), genes,
                torch.from_numpy(stream.protein_ids).to(device).expand(size, -1), gene_mask, protein_mask,
                torch.from_numpy(batch.targets).to(device))

    # --- steps -------------------------------------------------------------------------------
    def autocast(self) -> Any:
        """The autocast context of the training precision (bf16 on CUDA, else off).

        Returns
        -------
        torch.autocast
            The context manager.
        """
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.options.precision == "bf16")

    def train_step(self) -> float:
        """One optimizer step over `accumulation` micro-batches.

        Returns
        -------
        float
            The step's mean training loss.
        """
        self.wrapped.train()
        accumulation = self.options.accumulation
        total = 0.0
        for micro in range(accumulation):
            values, genes, proteins, gene_mask, protein_mask, targets = self.batch_tensors(
                self.next_micro_batch(micro))
            sync = micro == accumulation - 1 or not self.processes.active
            context = self.wrapped.no_sync() if not sync else contextlib.nullcontext()
            with context:
                with self.autocast():
                    pred = self.wrapped(values, genes, proteins, gene_mask, protein_mask)
                loss = masked_mse(pred.float(), targets, protein_mask) / accumulation
                loss.backward()
            total += float(loss.detach())
        if self.options.clip_norm:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.options.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    @torch.no_grad()
    def predict_val(self) -> tuple[np.ndarray, np.ndarray]:
        """Held-out predictions and targets in fp32 eval mode, as `translate` computes them.

        Returns
        -------
        predictions : numpy.ndarray
            ``(n_val, n_proteins)``.
        targets : numpy.ndarray
            ``(n_val, n_proteins)``; NaN for proteins a cell's dataset did not measure.
        """
        self.model.eval()
        n, p = self.stream.n_val, self.n_proteins
        out = np.empty((n, p), dtype=np.float32)
        truth = np.empty((n, p), dtype=np.float32)
        lo = 0
        for batch in self.stream.val_batches(self.options.val_batch_size):
            values, genes, proteins, gene_mask, _, _ = self.batch_tensors(batch)
            protein_mask = torch.from_numpy(self.stream.protein_mask).to(self.device).expand(values.shape[0], -1)
            pred = self.model(values, genes, proteins, gene_mask, protein_mask)
            hi = lo + values.shape[0]
            out[lo:hi] = pred[:, :p].float().cpu().numpy()
            truth[lo:hi] = np.where(batch.protein_mask[:, :p], batch.targets[:, :p], np.nan)
            lo = hi
        return out, truth

    def validate(self) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """Score the held-out cells.

        Returns
        -------
        metrics : dict
            val_loss, val_pearson and per-protein figures.
        predictions : numpy.ndarray
            ``(n_val, n_proteins)``.
        targets : numpy.ndarray
            ``(n_val, n_proteins)``.
        """
        pred, truth = self.predict_val()
        measured = np.isfinite(truth)
        if measured.all():
            per_protein = pearson_columns(pred, truth)
        else:  # several datasets with other panels: each protein over the cells that measured it
            per_protein = np.array([pearson_columns(pred[measured[:, j], j:j + 1], truth[measured[:, j], j:j + 1])[0]
                                    for j in range(truth.shape[1])])
        metrics = {"val_loss": float(np.mean((pred[measured] - truth[measured]) ** 2)),
                   "val_pearson": float(np.nanmean(per_protein)) if np.isfinite(per_protein).any() else math.nan,
                   "val_pearson_per_protein": [float(r) for r in per_protein]}
        return metrics, pred, truth

    # --- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds: weights, optimizer, schedule, RNG states, data position, progress.

        Returns
        -------
        dict
            The state (every process takes part: RNG states are gathered).
        """
        return {
            "fingerprint": self.fingerprint,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": gather_objects(self.processes, checkpoint.rng_state()),
            "step": self.step, "data_order": self.stream.state(),
            "forward_calls": {"enc": self.model.enc.forward_calls, "dec": self.model.dec.forward_calls},
            "best_metric": self.best_metric, "best_step": self.best_step, "best_state": self.best_state,
            "bad_validations": self.bad_validations,
            "train_loss": [self.train_loss_sum, self.train_loss_count],
        }

    def save(self) -> None:
        """Write a checkpoint (the main process writes; every process takes part)."""
        state = self.state()  # every process takes part (RNG states are gathered)
        if self.processes.is_main:
            checkpoint.save_state(self.work_dir, state)
        barrier(self.processes)

    def restore(self) -> None:
        """Continue from the checkpoint in the work directory.

        A checkpoint written by another number of processes resumes with a warning (the random
        streams differ).

        Raises
        ------
        CheckpointError
            No checkpoint, a damaged one, or one of another run (another fingerprint).
        """
        state = checkpoint.load_state(self.work_dir, self.fingerprint)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        if len(rngs) != self.processes.world:
            log.warning("resuming %d processes from a run of %d: random streams differ", self.processes.world,
                        len(rngs))
        checkpoint.set_rng_state(rngs[min(self.processes.rank, len(rngs) - 1)])
        self.step = int(state["step"])
        self.stream.restore(state["data_order"])
        self.model.enc.forward_calls = int(state["forward_calls"]["enc"])
        self.model.dec.forward_calls = int(state["forward_calls"]["dec"])
        self.best_metric, self.best_step = float(state["best_metric"]), state["best_step"]
        self.best_state = state["best_state"]
        self.bad_validations = int(state["bad_validations"])
        self.train_loss_sum, self.train_loss_count = float(state["train_loss"][0]), int(state["train_loss"][1])
        log.info("resumed at step %d of %d", self.step, self.total)

    # --- the run -----------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> Outcome:
        """Train until the last step, patience or stop_after.

        Parameters
        ----------
        resume : bool
            Continue from the checkpoint in the work directory.

        Returns
        -------
        Outcome
            What the run leaves behind.
        """
        options = self.options
        torch.manual_seed(options.seed * 1000 + 17 + self.processes.rank)  # dropout streams; restored on resume
        if resume:
            self.restore()
        started = time.perf_counter()
        bar = progress_bar(total=self.total, initial=self.step, desc="finetune", unit="step",
                           disable=options.quiet or not self.processes.is_main, dynamic_ncols=True)
        stopped_early = interrupted = False
        last_val: tuple[dict[str, Any], np.ndarray] | None = None
        try:
            while self.step < self.total:
                if options.stop_after is not None and self.step >= options.stop_after:
                    interrupted = True
                    break
                loss = self.train_step()
                self.train_loss_sum += loss
                self.train_loss_count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % self.val_every == 0 or self.step == self.total:
                    last_val = self.after_validation(started)
                    stopped_early = any_process(self.processes, self.should_stop())
                if self.step % self.checkpoint_every == 0 or self.step == self.total or stopped_early:
                    self.save()
                if stopped_early:
                    break
        finally:
            bar.close()
        if interrupted:
            self.save()
        return self.finish(stopped_early, interrupted, last_val, time.perf_counter() - started)

    def after_validation(self, started: float) -> tuple[dict[str, Any], np.ndarray]:
        """Validate, log the metrics, keep the best weights and count validations without improvement.

        Parameters
        ----------
        started : float
            The run's start (``time.perf_counter()``), for the log.

        Returns
        -------
        metrics : dict
            This validation's metrics.
        predictions : numpy.ndarray or None
            Its held-out predictions (None without held-out cells).
        """
        if self.stream.n_val:
            metrics, pred, self.val_truth = self.validate()
        else:
            metrics, pred = {"val_loss": math.nan, "val_pearson": math.nan}, None
        record = {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                  "train_loss": self.train_loss_sum / max(1, self.train_loss_count),
                  "val_loss": metrics["val_loss"], "val_pearson": metrics["val_pearson"],
                  "seconds": round(time.perf_counter() - started, 3)}
        self.train_loss_sum, self.train_loss_count = 0.0, 0
        if self.processes.is_main:
            self.metrics.write(record)
            log.info("step %d: train loss %.5f, held-out loss %.5f, mean per-protein r %.4f", self.step,
                     record["train_loss"], record["val_loss"], record["val_pearson"])
        score = metrics["val_pearson"]
        if np.isfinite(score) and score > self.best_metric:
            self.best_metric, self.best_step, self.bad_validations = float(score), self.step, 0
            if self.options.keep_best:
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_validations += 1
        return metrics, pred

    def should_stop(self) -> bool:
        """Whether patience has run out.

        Returns
        -------
        bool
            True after more than `patience` validations without improvement.
        """
        return self.options.patience is not None and self.bad_validations > self.options.patience

    def finish(self, stopped_early: bool, interrupted: bool, last_val: tuple[dict[str, Any], np.ndarray] | None,
               seconds: float) -> Outcome:
        """Put the weights to return in place (the best, unless last weights were asked) and describe the run.

        Parameters
        ----------
        stopped_early : bool
            Stopped by patience.
        interrupted : bool
            Stopped by stop_after.
        last_val : tuple or None
            The last validation's (metrics, predictions).
        seconds : float
            Wall time.

        Returns
        -------
        Outcome
            What the run leaves behind.
        """
        outcome = Outcome(steps_done=self.step, stopped_early=stopped_early, interrupted=interrupted,
                          best_step=self.best_step, seconds=seconds)
        if interrupted:
            return outcome
        if self.options.keep_best and self.best_state is not None and self.best_step != self.step:
            self.model.load_state_dict(copy.deepcopy(self.best_state))
            last_val = None
        if self.stream.n_val:
            if last_val is not None and last_val[1] is not None:
                metrics, pred = last_val
            else:
                metrics, pred, self.val_truth = self.validate()
            outcome.val_metrics, outcome.val_predictions, outcome.val_targets = metrics, pred, self.val_truth
        self.model.eval()
        return outcome

