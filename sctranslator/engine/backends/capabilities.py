"""What a backend can do, declared by its class (`capabilities`) and asked by the engine.

The engine never infers a capability from a backend's name: it asks `backend_capabilities(kind)`
(registry) for the class's declaration and checks the settings against it here, before anything is
read or written. This module imports neither torch nor a backend's runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sctranslator.errors import BackendError, BackendOptionError
from sctranslator.options import cli_flag


@dataclass(frozen=True)
class BackendCapabilities:
    """A backend's declared abilities (a class attribute `capabilities` of every backend).

    The engine asks these of a backend, never its name, to decide what a job may ask of it.

    Parameters
    ----------
    embeddings : bool
        It returns cell embeddings (it sees the encoder's outputs).
    windows_at_once : bool
        It computes every protein window in one call (else one call per window).
    precisions : mapping of str to tuple of str
        Device kind ("cpu", "cuda") -> the compute precisions it runs there; its keys are the
        devices ``--device`` may name (a server-side backend runs on the devices its server has,
        and takes only "cpu", meaning no device here).
    options : tuple of str
        The ``backend_options`` it reads.
    required_options : tuple of str
        The ``backend_options`` it cannot run without.
    onnx_file : bool
        It runs an ONNX export (given as ``onnx_path``, else exported on demand and cached).
    remote : bool
        It computes elsewhere (a server): no local GPU workers, one CPU thread per block here.
    optional_padding_collapse : bool
        The padding collapse can be turned off (``collapse_padding``); without this the backend
        always collapses the padding.
    memory_sized_batches : bool
        On CUDA it sizes its calls from free device memory when batch_size is None.
    cpu_streams : bool
        On CPU it splits a block's threads into single-thread calls that run side by side, one batch
        each (the defaults rule records them as ``streams``), instead of one call on them all.
    reduced_precision_warning : str or None
        Logged when fp16 / bf16 runs (how far it is from fp32).
    settings_hint : str
        What to do instead when ``--device`` or ``--precision`` is refused.
    """

    embeddings: bool = False
    windows_at_once: bool = False
    precisions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {"cpu": ("fp32",)})
    options: tuple[str, ...] = ()
    required_options: tuple[str, ...] = ()
    onnx_file: bool = False
    remote: bool = False
    optional_padding_collapse: bool = False
    memory_sized_batches: bool = False
    cpu_streams: bool = False
    reduced_precision_warning: str | None = None
    settings_hint: str = ""

    @property
    def devices(self) -> tuple[str, ...]:
        """The device kinds it runs on."""
        return tuple(self.precisions)


def device_kind(device: str) -> str:
    """The kind of a device name: 'cuda:1' -> 'cuda'.

    Parameters
    ----------
    device : str
        "cpu", "cuda" or "cuda:N".

    Returns
    -------
    str
        "cpu" or "cuda".
    """
    return device.split(":", 1)[0]


def check_backend_settings(kind: str, capabilities: BackendCapabilities, *, requested: str | None = None,
                           backend_options: Mapping[str, Any] | None = None, onnx_path: str | None = None,
                           compile: bool = False, precision: str = "fp32", device: str = "cpu",
                           embeddings: bool = False,
                           others: Callable[[], Mapping[str, BackendCapabilities]] = dict) -> None:
    """Refuse every setting the backend `kind` (declaring `capabilities`) cannot honour, in one place.

    Parameters
    ----------
    kind : str
        The backend.
    capabilities : BackendCapabilities
        What it declares.
    requested : str or None
        What the user asked for ("auto" is named in the message).
    backend_options : mapping or None
        The backend options given.
    onnx_path : str or None
        An ONNX export given.
    compile : bool
        torch.compile asked for.
    precision : str
        The compute dtype asked for.
    device : str
        The device asked for.
    embeddings : bool
        Cell embeddings asked for.
    others : callable
        Returns every backend's capabilities (asked only to name, in a message, the backends that
        would take the setting).

    Raises
    ------
    BackendOptionError
        An option the backend does not use (a backend option, onnx_path, compile, a device or
        precision it never runs), naming the backends that use it.
    BackendError
        A precision it has no kernels for on this device; embeddings from a backend without them.
    """
    chosen = kind if requested in (None, kind) else f"{kind} (chosen by --backend {requested})"

    def users(has: Callable[[BackendCapabilities], bool]) -> list[str]:
        return [name for name, caps in others().items() if has(caps)]

    def refuse(option: str, takers: list[str], fix: str) -> None:
        raise BackendOptionError(f"{option} applies to --backend {' or '.join(takers)}, not {chosen}; {fix}")

    given = dict(backend_options or {})
    if given.get("compile") is False:  # the default, stated
        given.pop("compile")
    for name in given:
        if name in capabilities.options:
            continue
        takers = users(lambda caps, name=name: name in caps.options)
        if not takers:
            known = sorted({n for caps in others().values() for n in caps.options})
            raise BackendOptionError(f"unknown backend option {name!r}; known: {', '.join(known)}")
        refuse(cli_flag(name), takers, f"drop it, or use --backend {takers[0]}")
    if onnx_path is not None and not capabilities.onnx_file:
        takers = users(lambda caps: caps.onnx_file)
        refuse("--onnx", takers, f"drop --onnx, or use --backend {takers[0]} (or auto)")
    if compile and "compile" not in capabilities.options:
        takers = users(lambda caps: "compile" in caps.options)
        refuse("--compile", takers, f"drop --compile or use --backend {takers[0]}")
    everywhere = {p for on_device in capabilities.precisions.values() for p in on_device}
    if precision not in everywhere:
        refuse(f"--precision {precision}", users(lambda caps: any(precision in p for p in caps.precisions.values())),
               capabilities.settings_hint or f"drop --precision {precision}")
    where = device_kind(device)
    if where not in capabilities.devices:
        refuse(f"--device {device}", users(lambda caps: where in caps.devices),
               capabilities.settings_hint or f"drop --device {device}")
    here = capabilities.precisions[where]
    if precision not in here:
        fixes = [f"--precision {' or '.join(here)} with {kind} on {where.upper()}"]
        fixes += [f"--backend {name} --precision {precision}"
                  for name in users(lambda caps: precision in caps.precisions.get(where, ()))[:1]]
        fixes += [f"--device {d}" for d, on_device in capabilities.precisions.items() if precision in on_device][:1]
        advice = f"{', '.join(fixes[:-1])}, or {fixes[-1]}" if len(fixes) > 1 else fixes[0]
        raise BackendError(f"the {kind} backend has no {precision} kernels on {where.upper()}; use {advice}")
    if embeddings and not capabilities.embeddings:
        takers = users(lambda caps: caps.embeddings)
        fix = (f"which only the {' or '.join(takers)} backend exposes; use --backend {takers[0]} with --embeddings"
               if takers else "which no installed backend exposes; drop --embeddings")
        raise BackendError(f"the {kind} backend cannot return cell embeddings: they come from the encoder's "
                           f"outputs, {fix}")
    missing = [name for name in capabilities.required_options if not given.get(name)]
    if missing:
        raise BackendOptionError(f"--backend {kind} needs {', '.join(cli_flag(name) for name in missing)} (see "
                                 "`sctranslator translate --help`)")
