"""Read the published scTranslator `.pt` files without their code and without running the pickle.

The files are `torch.save(model)` archives of whole modules. We unpickle `data.pkl` with an
allow-list: the globals the published files name are mapped to inert placeholders that only
record their state, tensors are rebuilt from the archive's raw storages by our own code, and
any other global is refused before anything is called.
"""

from __future__ import annotations

import collections
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sctranslator.errors import CheckpointError, UnsafeCheckpointError
from sctranslator.model.config import ModelConfig

# Classes of the original code and of torch.nn: instantiated as placeholders, never imported.
_PLACEHOLDER_GLOBALS = {
    ("performer_enc_dec", "scPerformerEncDec"),
    ("performer_enc_dec", "scPerformerLM"),
    ("performer_enc_dec", "MLPTranslator"),
    ("reversible", "SequentialSequence"),
    ("functools", "partial"),
    *(("performer_pytorch", name) for name in (
        "Performer", "SelfAttention", "FastAttention", "PreLayerNorm", "Chunk", "FeedForward",
        "ProjectionUpdater", "Always", "gaussian_orthogonal_random_matrix")),
}
_TORCH_NN_CLASSES = {"Linear", "Embedding", "LayerNorm", "Dropout", "GELU", "ReLU", "ModuleList"}
_TORCH_NN_MODULE = re.compile(r"^torch\.nn\.modules(\.[a-z_]+)?$")

# Typed storages only name a dtype; they are mapped to that dtype.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_BFLOAT16 = "BFloat16Storage"


class _Placeholder:
    """Stands in for an allowed class or function: remembers arguments and state, does nothing."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class OfficialCheckpoint:
    """What a published checkpoint holds, in our own terms.

    Parameters
    ----------
    state_dict : dict of str to torch.Tensor
        The weights under our key names.
    config : ModelConfig
        The architecture inferred from the tensor shapes.
    dropped_keys : list of str
        Official keys left out (shared duplicates, unused heads).
    source : str
        The file it was read from.
    """

    state_dict: dict[str, torch.Tensor]
    config: ModelConfig
    dropped_keys: list[str] = field(default_factory=list)
    source: str = ""


def _placeholder_class(module: str, name: str) -> type:
    return type(name, (_Placeholder,), {"qualified_name": f"{module}.{name}"})


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, storages: _StorageReader):
        super().__init__(file)
        self._storages = storages
        self._classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        key = (module, name)
        if key in _PLACEHOLDER_GLOBALS or (_TORCH_NN_MODULE.match(module) and name in _TORCH_NN_CLASSES):
            if key not in self._classes:
                self._classes[key] = _placeholder_class(module, name)
            return self._classes[key]
        if key == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if key == ("builtins", "set"):
            return set
        if key == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if key == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and (name in _STORAGE_DTYPES or name == _BFLOAT16):
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"refusing to load: the checkpoint's pickle names the global '{module}.{name}', which is "
            "not part of a published scTranslator checkpoint. Nothing in the file was executed. "
            "If you trust the file, convert it with the original code to a state_dict first."
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r} in checkpoint")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"storage {key} has an unknown type {storage_type!r}")
        return self._storages.read(key, storage_type.name)


class _StorageReader:
    """Raw storages of a torch zip archive, read once each, as flat tensors."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        self._archive = archive
        self._prefix = prefix
        self._cache: dict[str, torch.Tensor] = {}

    def read(self, key: str, type_name: str) -> torch.Tensor:
        if key not in self._cache:
            entry = f"{self._prefix}data/{key}"
            try:
                raw = bytearray(self._archive.read(entry))
            except KeyError:
                raise CheckpointError(f"checkpoint is truncated: storage '{entry}' is missing") from None
            if type_name == _BFLOAT16:
                flat = torch.frombuffer(raw, dtype=torch.bfloat16) if raw else torch.empty(0, dtype=torch.bfloat16)
            else:
                flat = torch.from_numpy(np.frombuffer(raw, dtype=_STORAGE_DTYPES[type_name]))
            self._cache[key] = flat
        return self._cache[key]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else offset
    if offset < 0 or any(s < 0 for s in stride) or (all(size) and last >= storage.numel()):
        raise CheckpointError(f"checkpoint tensor of shape {size} does not fit its storage")
    return torch.as_strided(storage, size, stride, offset).clone()


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _unpickle_archive(path: Path) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise _not_a_zip(path) from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pickles[0]) as handle:
            try:
                return _SafeUnpickler(handle, _StorageReader(archive, prefix)).load()
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{path}: the checkpoint's pickle is corrupted ({exc})") from exc
            except (zipfile.BadZipFile, zlib.error) as exc:  # a CRC mismatch or a damaged entry
                raise CheckpointError(f"{path} is corrupted ({exc}); download or copy it again") from exc


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_2 = b"\x80\x02"


def _not_a_zip(path: Path) -> CheckpointError:
    """Why a file zipfile cannot open is not a checkpoint: empty, truncated, legacy format, or other."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4)
    if size == 0:
        return CheckpointError(f"{path} is empty (0 bytes); the download or copy did not complete")
    if head == _ZIP_MAGIC:
        return CheckpointError(f"{path} is truncated or corrupted: it starts as a torch zip checkpoint but its "
                               f"end ({size:,} bytes read) is missing or damaged; download or copy it again "
                               "(compare its size / checksum with the original)")
    if head[:2] == _PICKLE_PROTOCOL_2:
        return CheckpointError(f"{path} is a pre-1.6 legacy torch checkpoint or a plain pickle: these cannot be "
                               "read without executing them; re-save it with torch >= 1.6 (torch.save) in a "
                               "trusted environment")
    return CheckpointError(f"{path} is not a torch checkpoint (no zip or pickle header); expected an official "
                           "scTranslator .pt file or a bundle directory")


def _module_state(obj: _Placeholder) -> dict[str, Any]:
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}  # (dict, slotstate) form
    return state if isinstance(state, dict) else {}


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor], settings: dict[str, Any]) -> None:
    """Walk placeholder modules the way nn.Module.state_dict() would."""
    state = _module_state(obj)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is None or (group == "_buffers" and name in non_persistent):
                continue
            out[prefix + name] = tensor
    cls_name = getattr(obj, "qualified_name", "")
    if cls_name.endswith("MLPTranslator") or cls_name.endswith("ProjectionUpdater"):
        settings.setdefault(cls_name.rsplit(".", 1)[-1], {}).update(
            {k: v for k, v in state.items() if isinstance(v, int | float) and not k.startswith("_")})
    if cls_name.endswith("Dropout") and prefix.startswith("translator.dropout0"):
        settings.setdefault("translator_dropout0", state.get("p"))
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out, settings)


_KEY_RULES = [
    (re.compile(r"^(enc|dec)\.performer\.net\.layers\.(\d+)\.0\.norm\."), r"\1.layers.\2.attn_norm."),
    (re.compile(r"^(enc|dec)\.performer\.net\.layers\.(\d+)\.0\.fn\.fast_attention\.projection_matrix$"),
     r"\1.layers.\2.attn.projection_matrix"),
    (re.compile(r"^(enc|dec)\.performer\.net\.layers\.(\d+)\.0\.fn\.(to_[qkvo]\w*)\."), r"\1.layers.\2.attn.\3."),
    (re.compile(r"^(enc|dec)\.performer\.net\.layers\.(\d+)\.1\.norm\."), r"\1.layers.\2.ff_norm."),
    (re.compile(r"^(enc|dec)\.performer\.net\.layers\.(\d+)\.1\.fn\.fn\.(w[12])\."), r"\1.layers.\2.ff.\3."),
]
_DROPPED = re.compile(r"^(enc|dec)\.performer\.proj_updater\.")


def normalise_official_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official key names -> ours: ``module.`` prefixes stripped, shared duplicates dropped.

    Parameters
    ----------
    state : dict of str to torch.Tensor
        The official state dict.

    Returns
    -------
    state : dict of str to torch.Tensor
        Under our names.
    dropped : list of str
        The keys left out.
    """
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if _DROPPED.match(key):
            dropped.append(key)
            continue
        for pattern, replacement in _KEY_RULES:
            key, count = pattern.subn(replacement, key)
            if count:
                break
        renamed[key] = tensor
    return renamed, dropped


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"checkpoint lacks '{key}': it is not a scTranslator encoder-decoder")
    return tuple(state[key].shape)


def infer_config(state: dict[str, torch.Tensor], **training: Any) -> ModelConfig:
    """The architecture implied by the tensor shapes of a (normalised) state dict.

    Parameters
    ----------
    state : dict of str to torch.Tensor
        Weights under our key names.
    **training
        Settings the shapes cannot tell (e.g. feature_redraw_interval).

    Returns
    -------
    ModelConfig
        The configuration.

    Raises
    ------
    CheckpointError
        Tensors missing or of unexpected shapes.
    """
    dim = _shape(state, "enc.to_vector.weight")[0]
    vocab = _shape(state, "enc.pos_emb.weight")[0]
    sides: dict[str, Any] = {}
    for side in ("enc", "dec"):
        layer_ids = {int(m.group(1)) for k in state if (m := re.match(rf"^{side}\.layers\.(\d+)\.", k))}
        if not layer_ids or layer_ids != set(range(len(layer_ids))):
            raise CheckpointError(f"checkpoint has no consecutive '{side}' blocks (found {sorted(layer_ids)})")
        nb, dim_head = _shape(state, f"{side}.layers.0.attn.projection_matrix")
        inner = _shape(state, f"{side}.layers.0.attn.to_q.weight")[0]
        hidden = _shape(state, f"{side}.layers.0.ff.w1.weight")[0]
        sides.update({f"{side}_depth": len(layer_ids), f"{side}_heads": inner // dim_head,
                      f"{side}_dim_head": dim_head, f"{side}_nb_features": nb})
        sides[f"{side}_ff_mult"] = hidden // dim
    if sides.pop("enc_ff_mult") != sides.pop("dec_ff_mult"):
        raise CheckpointError("encoder and decoder feed-forward widths differ; not a scTranslator model")
    fc_ids = sorted(int(m.group(1)) for k in state if (m := re.match(r"^translator\.fc(\d+)\.weight$", k)))
    if not fc_ids or fc_ids != list(range(len(fc_ids))):
        raise CheckpointError(f"checkpoint has no consecutive translator layers (found {fc_ids})")
    widths = [_shape(state, "translator.fc0.weight")[1]]
    widths += [_shape(state, f"translator.fc{i}.weight")[0] for i in fc_ids]
    config = ModelConfig(dim=dim, vocab_size=vocab, ff_mult=hidden // dim, max_genes=widths[0],
                         max_proteins=widths[-1], translator_depth=len(fc_ids),
                         translator_hidden=tuple(widths[1:-1]), **sides, **training)
    return config


def load_official_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """Read a published-format ``.pt`` file safely: our state dict and the inferred configuration.

    The pickle is read by an allow-list unpickler and never executed; tensors are read from the zip
    archive directly.

    Parameters
    ----------
    path : str or pathlib.Path
        The checkpoint.

    Returns
    -------
    OfficialCheckpoint
        Weights under our key names and the configuration.

    Raises
    ------
    CheckpointError
        A missing, empty, truncated or corrupted file, or one that holds no scTranslator model.
    UnsafeCheckpointError
        The pickle names a global outside the allow-list (nothing executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    root = _unpickle_archive(path)
    raw: dict[str, torch.Tensor] = {}
    settings: dict[str, Any] = {}
    if isinstance(root, _Placeholder):
        _collect_tensors(root, "", raw, settings)
    elif isinstance(root, dict):  # a saved state_dict (e.g. from a fine-tuning script)
        inner = root.get("state_dict", root.get("model", root))
        raw = {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    else:
        raise CheckpointError(f"{path}: the pickle holds a {type(root).__name__}, not a model")
    state, dropped = normalise_official_keys(raw)
    training: dict[str, Any] = {}
    dropout0 = settings.get("translator_dropout0")
    if isinstance(dropout0, float):
        training["initial_dropout"] = dropout0
    interval = settings.get("ProjectionUpdater", {}).get("feature_redraw_interval")
    if isinstance(interval, int):
        training["feature_redraw_interval"] = interval
    config = infer_config(state, **training)
    return OfficialCheckpoint(state_dict=state, config=config, dropped_keys=dropped, source=str(path))
