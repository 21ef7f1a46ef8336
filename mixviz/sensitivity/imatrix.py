"""llama.cpp's importance matrix: per linear layer, the mean square of each input feature over
the calibration tokens — computed here, or read from ``llama-imatrix``'s files.

``llama-imatrix`` sums ``x_j²`` over every token a weight multiplies (``in_sum2``) and counts the
tokens (``counts``); ``llama-quantize`` divides one by the other (in float32) and weights each
block's error by the result. :func:`compute` does the same over the profile's calibration
windows with forward hooks; :func:`read` takes llama.cpp's GGUF imatrix files and its legacy
``.dat``; :func:`write_gguf` writes the GGUF form, so ``llama-quantize --imatrix`` gets exactly
the values the profile used.

Names are GGUF tensor names, as llama.cpp keys them (``blk.3.ffn_down.weight``);
:func:`for_layers` maps them to the model's module names.

>>> im = Imatrix({"blk.0.ffn_down.weight": (np.array([2.0, 4.0], np.float32), 2)}, "demo")
>>> im.values("blk.0.ffn_down.weight").tolist()
[1.0, 2.0]
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixviz.errors import MixvizError


@dataclass(frozen=True)
class Imatrix:
    """``{gguf tensor name: (in_sum2 float32[n], token count)}`` and where it came from."""

    entries: dict[str, tuple[np.ndarray, int]] = field(compare=False)
    source: str
    chunk_count: int = 0
    chunk_size: int = 0

    def values(self, name: str) -> np.ndarray:
        """What llama-quantize weights ``name``'s errors by: ``in_sum2 / count`` in float32
        (ones where nothing was counted), as tools/quantize/quantize.cpp computes it."""
        sums, count = self.entries[name]
        if count <= 0:
            return np.ones_like(sums, dtype=np.float32)
        return (sums.astype(np.float32) / np.float32(count)).astype(np.float32)

    def digest(self) -> str:
        """A SHA-256 over the values (part of a profile's cache key)."""
        h = hashlib.sha256()
        for name in sorted(self.entries):
            sums, count = self.entries[name]
            h.update(name.encode() + struct.pack("<q", count) + sums.astype("<f4").tobytes())
        return h.hexdigest()[:16]


def for_layers(imatrix: Imatrix, layer_names) -> dict[str, np.ndarray]:
    """``{module name: weights}`` for the layers the imatrix covers
    (``model.layers.3.mlp.down_proj`` ↔ ``blk.3.ffn_down.weight``); a layer it lacks is quantized
    without one, as llama.cpp does."""
    from mixviz.models.targets import gguf_tensor_name as gguf_name

    out = {}
    for name in layer_names:
        key = f"{gguf_name(name)}.weight"
        if key in imatrix.entries:
            out[name] = imatrix.values(key)
    return out


def compute(model, windows, source: str = "calibration") -> Imatrix:
    """The importance matrix of ``model``'s block linears over ``windows`` (token ids,
    ``[n, seqlen]``), one forward each: ``Σ x_j²`` of every token a layer sees, and the count.

    llama-imatrix does this in llama.cpp's arithmetic; here it is float32 torch (a test compares
    the two on the same tokens)."""
    import torch

    from mixviz.models.inventory import block_linears, inventory
    from mixviz.models.targets import gguf_tensor_name as gguf_name

    names = [x.name for x in block_linears(inventory(model))]
    mods = dict(model.named_modules())
    sums = {n: torch.zeros(mods[n].in_features, dtype=torch.float64) for n in names}
    counts = dict.fromkeys(names, 0)

    def hook(name):
        def fn(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] += x.square().sum(0).double().cpu()
            counts[name] += x.shape[0]

        return fn

    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for row in windows:
                model(row.reshape(1, -1).to(model.device))
    finally:
        for h in handles:
            h.remove()
    entries = {f"{gguf_name(n)}.weight": (sums[n].float().numpy(), counts[n]) for n in names}
    return Imatrix(entries, source, len(windows), int(windows.shape[-1]))


def read(path: str | Path) -> Imatrix:
    """A llama.cpp imatrix file: GGUF (``*.in_sum2`` / ``*.counts`` tensors) or legacy ``.dat``."""
    p = Path(path)
    try:
        head = p.read_bytes()[:4]
    except OSError as e:
        raise MixvizError(f"cannot read imatrix file {p}: {e.strerror or e}") from None
    return _read_gguf(p) if head == b"GGUF" else _read_legacy(p)


def _read_gguf(p: Path) -> Imatrix:
    import gguf

    try:
        r = gguf.GGUFReader(str(p))
    except Exception as e:  # noqa: BLE001 - gguf raises bare ValueErrors and struct errors
        raise MixvizError(f"imatrix file {p.name} is not a readable GGUF: {e}") from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in r.tensors}
    entries = {}
    for name, sums in tensors.items():
        if name.endswith(".in_sum2"):
            base = name.removesuffix(".in_sum2")
            counts = tensors.get(base + ".counts")
            if counts is None:
                raise MixvizError(f"imatrix file {p.name}: {base} has sums but no counts")
            if counts.size != 1:
                raise MixvizError(f"imatrix file {p.name}: {base} has per-expert counts (MoE)")
            entries[base] = (sums.copy(), int(round(float(counts[0]))))
    if not entries:
        raise MixvizError(f"imatrix file {p.name} holds no *.in_sum2 tensors")

    def field_int(key: str) -> int:
        f = r.fields.get(key)
        return int(f.parts[f.data[0]][0]) if f else 0

    return Imatrix(
        entries, p.name, field_int("imatrix.chunk_count"), field_int("imatrix.chunk_size")
    )


def _read_legacy(p: Path) -> Imatrix:
    """``int32 n; n × (int32 len, name, int32 ncall, int32 nval, float32[nval])`` — the values
    are already means times ncall (common/imatrix-loader.cpp)."""
    data = p.read_bytes()
    try:
        (n,), off = struct.unpack_from("<i", data), 4
        entries = {}
        for _ in range(n):
            (length,) = struct.unpack_from("<i", data, off)
            name = data[off + 4 : off + 4 + length].decode()
            off += 4 + length
            ncall, nval = struct.unpack_from("<ii", data, off)
            off += 8
            vals = np.frombuffer(data, dtype="<f4", count=nval, offset=off).astype(np.float32)
            off += 4 * nval
            entries[name] = (vals.copy(), ncall)
    except (struct.error, ValueError, UnicodeDecodeError):
        raise MixvizError(
            f"imatrix file {p.name} is neither GGUF nor llama.cpp's legacy .dat"
        ) from None
    if not entries:
        raise MixvizError(f"imatrix file {p.name} holds no entries")
    return Imatrix(entries, p.name)


def write_gguf(imatrix: Imatrix, path: str | Path) -> Path:
    """``imatrix`` as llama-imatrix's GGUF file (what ``llama-quantize --imatrix`` reads)."""
    import gguf

    from mixviz.paths import atomic_write_bytes

    w = gguf.GGUFWriter(path=None, arch="imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [imatrix.source])
    w.add_uint32("imatrix.chunk_count", imatrix.chunk_count)
    w.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
    for name in sorted(imatrix.entries):
        sums, count = imatrix.entries[name]
        w.add_tensor(f"{name}.in_sum2", sums.astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[float(count)]], dtype=np.float32))
    tmp = Path(str(path) + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file(path=tmp)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    atomic_write_bytes(Path(path), tmp.read_bytes())
    tmp.unlink()
    return Path(path)


def auto_path(model_hash: str, spec) -> Path:
    """Where ``--imatrix auto``'s matrix for ``spec``'s calibration windows is kept (GGUF, as
    llama-imatrix writes it): the file to hand ``llama-quantize --imatrix``."""
    from mixviz.models.text import calibration_text

    text = calibration_text(spec.calib).hash
    return _auto_name(model_hash, text, spec.nsamples, spec.seqlen, spec.dtype)


def _auto_name(model_hash: str, text_hash: str, nsamples: int, seqlen: int, dtype: str) -> Path:
    from mixviz.paths import cache_dir

    name = f"{model_hash[:16]}-{text_hash[:12]}-{nsamples}x{seqlen}-{dtype}.gguf"
    return cache_dir() / "imatrix" / name


def _kept_path(path: str | Path) -> Path:
    """Where a profile's imatrix *file* is kept, by its digest (``imatrix_id``'s), so the file
    a profile was weighted by can be found again from the profile alone."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return _kept_path_of(digest, Path(path).name)


def profile_file(profile) -> Path | None:
    """The importance matrix file a :class:`~mixviz.sensitivity.profile.Profile` was weighted
    by (its ``imatrix``: ``auto`` or ``name@digest``), to hand ``quantize --imatrix``; None
    without one, or where the file is not kept here."""
    if profile.imatrix is None:
        return None
    if profile.imatrix != "auto":
        name, _, digest = profile.imatrix.rpartition("@")
        path = _kept_path_of(digest, name)
        return path if path.is_file() else None
    c = profile.calib  # the spec's dtype may have been "auto" (the file is named by it)
    for dtype in (profile.dtype, "auto"):
        path = _auto_name(profile.model_hash, c.hash, c.nsamples, c.seqlen, dtype)
        if path.is_file():
            return path
    return None


def _kept_path_of(digest: str, name: str) -> Path:
    from mixviz.paths import cache_dir

    return cache_dir() / "imatrix" / "kept" / f"{digest}-{name}"


def load(spec, model=None, windows=None, model_hash: str = "") -> Imatrix:
    """``spec.imatrix`` as an :class:`Imatrix`: the file it names, or (``auto``) the one kept at
    :func:`auto_path`, computed from ``model`` over ``windows`` when absent."""
    if spec.imatrix != "auto":
        im = read(spec.imatrix)
        kept = _kept_path(spec.imatrix)
        if not kept.is_file():  # found again from the profile: profile_file
            from mixviz.paths import atomic_write_bytes

            atomic_write_bytes(kept, Path(spec.imatrix).read_bytes())
        return im
    path = auto_path(model_hash, spec)
    if path.is_file():
        return read(path)
    if model is None:
        raise MixvizError(f"no importance matrix computed yet at {path}: profile with it first")
    im = compute(model, windows, source=f"{spec.calib}:{spec.nsamples}x{spec.seqlen}")
    write_gguf(im, path)
    return im


@contextmanager
def weighting(model, spec, windows, layer_names, model_hash: str = "") -> Iterator[None]:
    """Inside the ``with``, GGML types on ``model`` are quantized with ``spec.imatrix``."""
    from mixviz.sensitivity.quantizers import importance

    im = load(spec, model, windows, model_hash)
    with importance(model, for_layers(im, layer_names)):
        yield None
