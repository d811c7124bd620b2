"""Training checkpoints: everything needed to continue a run as if it had never stopped.

Model, optimizer and scheduler states, every process's random-number state, the step, the
position in the seeded data order, the random-feature redraw counters, and the best weights so
far. Written atomically; read with `weights_only=True` (no pickled code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sctranslator.errors import CheckpointError
from sctranslator.util.atomic import atomic_write

STATE_FILE = "state.pt"
FORMAT = "sctranslator-training-state"


def rng_state() -> dict[str, Any]:
    """The random generators' states (torch, and CUDA when it is in use).

    Returns
    -------
    dict
        State per generator.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the random generators' states.

    Parameters
    ----------
    state : dict
        As `rng_state` returned it.
    """
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write a run's training state atomically.

    Parameters
    ----------
    directory : pathlib.Path
        The run's work directory (created when absent).
    state : dict
        The state (see `Trainer.state`).

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    OutputWriteError
        The file cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    atomic_write(path, lambda handle: torch.save({"format": FORMAT, **state}, handle))
    return path


def load_state(directory: Path, fingerprint: str) -> dict[str, Any]:
    """The saved state of a run.

    Parameters
    ----------
    directory : pathlib.Path
        The run's work directory.
    fingerprint : str
        The run's identity; a state written for other data or settings is refused.

    Returns
    -------
    dict
        The state.

    Raises
    ------
    CheckpointError
        No state, a damaged one, or one of another run.
    """
    path = directory / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"nothing to resume: {path} does not exist (start without resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(f"{path} cannot be read ({exc}); the training state is damaged") from exc
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a sctranslator training state")
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{path} was written for other data or settings; resume with the same arguments, "
                              "or start afresh in another directory")
    return state
