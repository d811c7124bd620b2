"""Progress bars for the Python API and the command line: a widget in Jupyter, text in a terminal."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm as text_tqdm


def progress_bar(*, total: int | None, desc: str, unit: str, disable: bool = False, initial: int = 0,
                 **kwargs: Any) -> text_tqdm:
    """A tqdm bar from `tqdm.auto` (the notebook widget under IPython kernels, text on stderr elsewhere).

    Parameters
    ----------
    total, desc, unit, initial
        As for `tqdm.tqdm`.
    disable
        True makes a bar that draws nothing (the `quiet=True` of the API functions).
    **kwargs
        Further `tqdm.tqdm` settings (dynamic_ncols, smoothing, ...).

    Returns
    -------
    tqdm.tqdm
        The bar; `update(n)` and `close()` work the same for every kind.
    """
    settings = {"total": total, "desc": desc, "unit": unit, "initial": initial, "disable": disable, **kwargs}
    if not disable:
        try:
            from tqdm.auto import tqdm as auto_tqdm

            return auto_tqdm(file=sys.stderr, **settings)
        except ImportError:
            # A Jupyter kernel without ipywidgets: tqdm's widget cannot be built, a text bar still shows progress.
            pass
    return text_tqdm(file=sys.stderr, **settings)


def count_done(bar: text_tqdm, cells: int) -> None:
    """Show cells finished before this run as done on a progress bar, without counting them as speed.

    The rate and ETA then reflect only what this run computes.

    Parameters
    ----------
    bar : tqdm
        The progress bar.
    cells : int
        Cells already done.
    """
    if not cells:
        return
    bar.n += cells
    if hasattr(bar, "last_print_n"):  # a disabled bar keeps no rate state
        bar.last_print_n += cells
        bar.initial += cells
        bar.refresh()
