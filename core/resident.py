"""Models and tokenizers kept in memory between the steps of one process (the in-memory handoff),
so that weights just trained or just loaded are not read back from disk by the next step.

Everything here is keyed by a local model folder and the identity of its files (every weight,
config and tokenizer file's name, size and modification time), plus the dtype and device the
model was asked for: an entry is served only while the folder still holds the files it was
stored with, so a rewritten, removed or pruned checkpoint is never served from memory, and a
name is never enough (a Hub id or any name that is not a local folder is not kept at all).
- `model(folder, dtype, device, load)`: the kept model, else `load()`'s, then kept. Models
  are shared, read-only and in eval mode (evaluation, reference scoring, self-play generation);
  a caller that trains asks for a private copy.
- `offer(folder, model, dtype, device)`: keep a model that already holds the folder's weights
  (training offers its final policy right after saving the checkpoint).
- `tokenizer(folder, load)`: the same for tokenizers (never changed after loading).
Only CPU models are kept (a GPU's memory is the training's), up to $GSIL_RESIDENT_MB of weights
(default: a sixth of the machine's memory, at most 4 GiB; 0 turns the handoff off), the least
recently used first out. `forget(folder)` drops a folder's entries (harness.retention, before it
removes weights).
"""

from __future__ import annotations

import copy
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")  # weights, config, tokenizer
ENV = "GSIL_RESIDENT_MB"


@dataclass
class _Entry:
    identity: tuple[tuple[str, int, int], ...]
    value: Any
    nbytes: int


_MODELS: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
_TOKENIZERS: dict[str, _Entry] = {}


def budget() -> int:
    """Bytes of model weights kept at most."""
    if os.environ.get(ENV):
        return int(float(os.environ[ENV]) * 2**20)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 0
    return min(4 * 2**30, total // 6)


def files_identity(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of the folder's weight, config and tokenizer files (not the model card)."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in FILE_SUFFIXES:
            st = p.stat()
            out.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _key(folder: Path, dtype: Any, device: Any) -> tuple[str, str, str]:
    return str(folder.resolve()), str(dtype), str(device)


def _nbytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _local(folder: str | Path) -> Path | None:
    path = Path(folder)
    return path if path.is_dir() else None


def get(folder: str | Path, dtype: Any, device: Any) -> Any:
    """The model kept for `folder` (same files, dtype, device), else None."""
    path = _local(folder)
    if path is None:
        return None
    key = _key(path, dtype, device)
    entry = _MODELS.get(key)
    if entry is None:
        return None
    if entry.identity != files_identity(path):  # the folder changed since: never served
        del _MODELS[key]
        return None
    _MODELS.move_to_end(key)
    return entry.value


def offer(folder: str | Path, model: Any, dtype: Any, device: Any) -> bool:
    """Keep `model` (which holds `folder`'s weights) for later steps of this process; False when not kept."""
    path = _local(folder)
    if path is None or str(device) != "cpu":
        return False
    size, limit = _nbytes(model), budget()
    if size > limit:
        return False
    key = _key(path, dtype, device)
    _MODELS.pop(key, None)
    while _MODELS and sum(e.nbytes for e in _MODELS.values()) + size > limit:
        _MODELS.popitem(last=False)
    model.eval()
    _MODELS[key] = _Entry(files_identity(path), model, size)
    return True


def model(folder: str | Path, dtype: Any, device: Any, load: Callable[[], Any], *, private: bool = False) -> Any:
    """The kept model of `folder`, else `load()`'s (then kept): shared, read-only, eval mode; with
    `private`, one the caller may change (train): a copy of the kept one, else `load()`'s, not kept."""
    found = get(folder, dtype, device)
    if found is not None:
        log.debug("%s: from memory%s", folder, " (copied)" if private else "")
        return copy.deepcopy(found) if private else found
    loaded = load()
    if not private:
        offer(folder, loaded, dtype, device)
    return loaded


def is_kept(model: Any) -> bool:
    return any(e.value is model for e in _MODELS.values())


def tokenizer(folder: str | Path, load: Callable[[], Any]) -> Any:
    """The kept tokenizer of `folder` (same files), else `load()`'s (then kept)."""
    path = _local(folder)
    if path is None:
        return load()
    key, ident = str(path.resolve()), files_identity(path)
    entry = _TOKENIZERS.get(key)
    if entry is not None and entry.identity == ident:
        return entry.value
    tok = load()
    _TOKENIZERS[key] = _Entry(ident, tok, 0)
    return tok


def forget(folder: str | Path) -> None:
    """Drop every entry of `folder`."""
    name = str(Path(folder).resolve())
    for key in [k for k in _MODELS if k[0] == name]:
        del _MODELS[key]
    _TOKENIZERS.pop(name, None)


def clear() -> None:
    _MODELS.clear()
    _TOKENIZERS.clear()
