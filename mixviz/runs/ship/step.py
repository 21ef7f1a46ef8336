"""Ship the chosen recipe: write a real checkpoint, reload it from disk as a user would, verify.

A run whose spec has ``ship`` (``mixviz quantize``, the app's *Quantize* button) quantizes as any
run, measures the in-memory model's KLD, then (:func:`ship_step`):

1. writes the checkpoint with auto-round's own exporter (``save_quantized(format=…)``), its
   per-layer overrides named also as vLLM's fused modules (:mod:`mixviz.runs.ship.overrides`), plus
   ``mixviz-recipe.json`` and a model card (``README.md``);
2. reads every layer's format back **from the files** (safetensors headers and the
   ``quantization_config``, or the GGUF tensor types through ``gguf.GGUFReader``) and the bytes
   its tensors take, against the recipe's predicted bits;
3. reloads the checkpoint from disk with the loader a user would use (transformers'
   ``from_pretrained``: auto-round / compressed-tensors / GPTQ backends that run on a CPU;
   ``gguf_file=`` for GGUF) and measures its KLD to the unquantized model on the same held-out
   windows; the paired difference reloaded − in-memory (per window, 95 % interval) must contain
   0 or stay within the in-memory KLD's own 95 % half-width; each layer's output on a fixed
   probe is compared with the in-memory layer's, and those that differ by more than
   ``PROBE_RTOL`` are listed (the layers to look at when the KLD check fails);
4. for GGUF, llama.cpp itself: ``llama-perplexity --kl-divergence`` of the file against a BF16
   GGUF of the same model written by llama.cpp's converter (:mod:`mixviz.runs.ship.llamacpp`);
   with ``--verify-with vllm``, vLLM itself loads and scores the files
   (:mod:`mixviz.runs.ship.vllm_check`): a refusal or a KLD beyond the interval fails the run.

Everything lands in ``cache/runs/<id>/ship.json``, with every file's size and sha256
(``files``, what a reused job checks before copying: :mod:`mixviz.runs.ship.delivery`); a failed
check fails the run naming the layers that differ. The files are written into a sibling partial
folder renamed to ``--out`` only once verified (:mod:`mixviz.runs.ship.staging`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.schemes import get_scheme, layer_bits
from mixviz.models.targets import check_format, check_shared, gguf_option
from mixviz.paths import atomic_write_bytes, atomic_write_json
from mixviz.runs.runspec import RunSpec
from mixviz.runs.ship.checkpoint_files import checkpoint_file, read_formats, sizes
from mixviz.runs.ship.overrides import name_fused
from mixviz.runs.ship.reload import (
    compare_probes,
    compare_reloaded,
    llamacpp_check,
    reload,
    within_interval,
)
from mixviz.runs.ship.staging import fingerprint, staged
from mixviz.runs.ship.vllm_check import vllm_check, vllm_line, vllm_ok
from mixviz.runs.store import Store, runs_dir

SHIP_TASK = "mixviz_ship"
RECIPE_FILE = "mixviz-recipe.json"


def check_ship(spec: RunSpec, plan: dict[str, str], widths: dict[str, int]) -> None:
    """Refuse, before any work, what the checkpoint format cannot hold (``plan``: layer →
    option; ``widths``: layer → in_features), and an output folder that is not empty (mixviz
    never writes over files it did not make)."""
    check_format(plan, spec.ship.format, widths)
    out = Path(spec.ship.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MixvizError(f"{out} exists and is not an empty folder: choose a new --out")


def quantize_spec(
    ref,
    recipe: dict[str, str],
    fmt: str,
    out: str | Path,
    *,
    layers,
    target: str | None = None,
    verify_with: tuple[str, ...] = (),
    **fields,
) -> RunSpec:
    """The run spec of a quantize job — ``recipe`` written as a ``fmt`` checkpoint into ``out``,
    every block linear of ``layers`` (the model's inventory) it leaves out at BF16 — with every
    refusal checked before anything is queued: what the format cannot hold, what the
    ``target`` runtime cannot load (a fused group split included), a folder with files in it
    (unless they are the identical finished job's checkpoint), a folder that cannot be written
    or lacks room. ``fields`` go to the :class:`RunSpec` (``limit``, ``quant``, ``strategy``,
    ``device``, ...)."""
    from mixviz.models.targets import get_runtime, target_isa
    from mixviz.runs.evaluation.tasks import KLD_TASK
    from mixviz.runs.runspec import ShipArgs
    from mixviz.runs.ship.delivery import check_out, holds

    widths = {x.name: x.in_features for x in layers}
    recipe = {**{x.name: "BF16" for x in layers if x.block is not None}, **recipe}
    if fields.get("limit") == 1:
        raise MixvizError(
            "--limit 1: the checkpoint is verified by comparing held-out windows (reload, "
            "vLLM, llama.cpp), and one window gives no interval to tell a difference by; "
            "give --limit 2 or more (or leave it out for all)"
        )
    if target:
        rt = get_runtime(target)
        for name, option in recipe.items():
            why = rt.why_not(get_scheme(option), widths[name])
            if why:
                raise MixvizError(f"{rt.label} cannot load {name} at {option}: {why}")
        check_shared(recipe, target, _architecture(ref))
    spec = RunSpec(
        model=ref.name,
        recipe=dict(recipe),
        tasks=(KLD_TASK,),
        model_hash=ref.hash,
        ship=ShipArgs(
            fmt,
            str(Path(out).expanduser().resolve()),
            tuple(verify_with),
            target_isa(target) if "vllm" in verify_with else None,
        ),
        **fields,
    )
    store = Store()
    if not holds(store, spec):  # else --out already holds that finished job's checkpoint
        check_ship(spec, recipe, widths)
        check_out(ref, spec, store)  # writable, with room: before any work
    return spec


def _architecture(ref) -> str | None:
    """``config.architectures[0]`` of the model (which modules a runtime fuses), or None."""
    from mixviz.models.loading import load_config

    try:
        return (getattr(load_config(ref), "architectures", None) or [None])[0]
    except MixvizError:
        return None


def _format_string(spec: RunSpec, plan: dict[str, str]) -> str:
    if spec.ship.format != "gguf":
        return spec.ship.format
    # the lowest type: auto-round's GGUF exporter re-types layers it finds below the format's
    # own type (a recipe's Q4_0 layers came out Q5_0 under format gguf:q5_0; the files say)
    types = [gguf_option(o) for o in plan.values() if get_scheme(o).bits < 16] or ["Q8_0"]
    lowest = min(types, key=lambda t: (layer_bits(get_scheme(t), 256, 1), t))
    return get_scheme(lowest).preset.lower()  # gguf:q4_0, gguf:q3_k_s (a plain K-type)


@dataclass(frozen=True)
class InMemory:
    """What the in-memory run hands the ship step: the ``AutoRound`` that writes the files, the
    KLD reference, each layer's output on a probe (:func:`~mixviz.runs.ship.reload.probe_layers`,
    taken before saving packs the model) and the run's bits (with scale bits, without)."""

    ar: object
    reference: object
    probes: dict
    bits: tuple[float, float]


class _Stages:
    """The ship step's stages, shown in the store, and the seconds the timed ones took."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, progress: float, timing: str | None = None) -> Iterator[None]:
        self.store.update(self.run_id, stage=name, progress=progress)
        t = time.perf_counter()
        yield
        if timing is not None:
            self.timings[timing] = time.perf_counter() - t


def ship_step(
    store: Store, run_id: str, spec: RunSpec, loaded, memory: InMemory, raw: dict
) -> dict[str, float]:
    """Write, read back, reload and verify the checkpoint (module doc) in a sibling partial
    folder, renamed to ``--out`` only once verified (:func:`~mixviz.runs.ship.staging.staged`: a
    failure, a cancel or a kill leaves ``--out`` as it was); returns its timings. ``raw``
    gains the ``mixviz_ship`` task's numbers; a failed check raises."""
    if memory.reference is None:
        raise MixvizError("a checkpoint is verified by KLD: the run needs the mixviz_kld task")
    final = Path(spec.ship.out)
    with staged(final, run_id, lambda: store.get(run_id).status == "running") as out:
        timings = _ship_into(out, store, run_id, spec, loaded, memory, raw)
        store.update(run_id, stage="moving into place", progress=0.98)
    return timings


def _ship_into(
    out: Path, store: Store, run_id: str, spec: RunSpec, loaded, memory: InMemory, raw: dict
) -> dict[str, float]:
    """:func:`ship_step`'s work in the folder ``out``; ``ship.json`` names ``--out``."""
    from mixviz.models.inventory import block_linears

    steps = _Stages(store, run_id)
    final, fmt, plan = Path(spec.ship.out), spec.ship.format, loaded.plan
    with steps.stage(f"writing {fmt}", 0.72, "write"):
        writer = _write(memory.ar, spec, loaded, out)
        name_fused(out, fmt, plan)  # vLLM looks overrides up by qkv_proj / gate_up_proj
    with steps.stage("reading the files back", 0.8):
        layers = block_linears(loaded.layers)
        formats = read_formats(out, fmt, plan, layers)
    with steps.stage("reloading from disk", 0.83, "reload"):
        model = reload(out, spec, plan)
    probe_diff = compare_probes(model, memory.probes)
    with steps.stage("KLD of the reloaded model", 0.86, "reload kld"):
        in_memory, disk = _klds(run_id, spec, model, memory.reference, raw)
    vllm = None
    if "vllm" in spec.ship.verify_with:
        with steps.stage("vLLM's KLD", 0.9, "vllm"):
            log = runs_dir() / run_id / "vllm.log"
            vllm = vllm_check(out, memory.reference, in_memory, spec.limit, log, spec.ship.vllm_isa)
    llama = None
    if fmt == "gguf":
        with steps.stage("llama.cpp's KLD", 0.93, "llama.cpp kld"):
            llama = llamacpp_check(checkpoint_file(out, "gguf"), spec, loaded.model_hash, in_memory)
    # what the files are predicted to hold: W8A16G32 is written to GGUF as Q8_0 (8.5 bpw)
    written = {n: gguf_option(o) for n, o in plan.items()} if fmt == "gguf" else plan
    wrong = [f"{n}: asked {f['asked']}, the files hold {f['found']}" for n, f in formats.items()
             if not f["ok"]]  # fmt: skip
    doc = {
        "format": fmt,
        "out": str(final),
        "file": str(final / checkpoint_file(out, fmt).relative_to(out)),
        "layers": formats,
        **sizes(formats, written, layers),
        "total_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "predicted_file_bytes": _predicted_file(spec, loaded, written),
        **compare_reloaded(in_memory, disk, probe_diff),
        "llama_cpp": llama,
        "writer": writer,
        "vllm": vllm,
        "timings": steps.timings,
    }
    doc["ok"] = (
        not wrong
        and within_interval(doc["delta_kld"])
        and _llamacpp_agrees(llama)
        and vllm_ok(vllm)
    )
    write_card(out, spec, loaded, doc, memory.bits)
    doc["files"] = fingerprint(out)  # what a reused job checks before copying (delivery)
    atomic_write_json(runs_dir() / run_id / "ship.json", doc)
    raw[SHIP_TASK] = {"results": {SHIP_TASK: _ship_metrics(doc)}}
    _refuse(doc, wrong)
    return steps.timings


def _write(ar, spec: RunSpec, loaded, out: Path) -> str:
    """Write the files; the writer's name (``auto-round``, or ``llama-quantize`` for a GGUF where
    llama.cpp is built: :mod:`mixviz.runs.ship.gguf_writer`)."""
    if spec.ship.format == "gguf":
        from mixviz.runs.ship.gguf_writer import write_gguf

        return write_gguf(ar, spec, loaded, out, _format_string(spec, loaded.plan))
    ar.save_quantized(str(out), format=_format_string(spec, loaded.plan), inplace=True)
    return "auto-round"


def _predicted_file(spec: RunSpec, loaded, plan: dict[str, str]) -> int:
    """The checkpoint's bytes as ``allocate --size`` prices them (:mod:`mixviz.models.file_size`)
    — set beside ``total_bytes``, what was written."""
    from mixviz.models.file_size import predicted_bytes
    from mixviz.models.loading import meta_model, resolve_model
    from mixviz.runs.ship.llamacpp import converted_path

    ref = resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    conv = converted_path(loaded.model_hash, "f32")
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    # the meta copy: saving packed loaded.model in place (QuantLinear has no in_features)
    return predicted_bytes(meta_model(ref), plan, spec.ship.format, dtype=dtype,
                           folder=ref.path, gguf_file=conv)  # fmt: skip


def _llamacpp_agrees(llama: dict | None) -> bool:
    """llama.cpp's verdict counts: its KLD (on its own positions) within the in-memory run's
    interval; not checked (llama.cpp absent, or not a GGUF) is no failure but is said so."""
    return llama is None or llama.get("agrees") is not False


def _refuse(doc: dict, wrong: list[str]) -> None:
    """Fail the run when the files are not the recipe's (``wrong``), or when the reloaded
    model's KLD differs from the in-memory run's, naming the layers that differ."""
    if wrong:
        raise MixvizError(f"{len(wrong)} layers in the files are not the recipe's, e.g. {wrong[0]}")
    llama = doc.get("llama_cpp") or {}
    if llama.get("agrees") is False:
        raise MixvizError(
            f"llama.cpp disagrees: its KLD {llama['kld'][0]:.5f} is beyond the in-memory run's "
            f"{llama['memory_kld'][0]:.5f} ± {llama['tolerance']:.5f} on the same positions "
            "(the second half of each window)"
        )
    delta = doc["delta_kld"]
    if not vllm_ok(doc.get("vllm")):
        raise MixvizError(vllm_line(doc["vllm"]))
    if not within_interval(delta):
        drift = [d["layer"] for d in doc["probe_drift"][:5]]
        names = ", ".join(drift) or "none beyond the probe tolerance"
        raise MixvizError(
            f"the reloaded checkpoint differs from the in-memory run: KLD Δ "
            f"{delta['delta']:+.2e} [{delta['lo']:+.2e}, {delta['hi']:+.2e}], beyond the "
            f"in-memory run's ±{delta['tolerance']:.1e}; layers that differ: {names}"
        )


def _klds(run_id: str, spec: RunSpec, model, reference, raw: dict) -> tuple:
    """The in-memory model's per-token scores and the reloaded one's, both kept in the run's
    folder whatever the verdict (the files are what ships)."""
    from mixviz.runs.evaluation import kld

    disk = kld.scored_from(kld.score(model, reference, limit=spec.limit), spec.score_from)
    memory = raw["mixviz_kld"]["token_scores"]
    folder = runs_dir() / run_id
    memory.save(folder / "kld_memory.npz")
    disk.save(folder / "kld_reloaded.npz")
    return memory, disk


def _ship_metrics(doc: dict) -> dict:
    rows = {f"{m}_reloaded": (v, se) for m, v, se in doc["kld_reloaded"] if m in ("kld", "top1")}
    rows["delta_kld"] = (doc["delta_kld"]["delta"], doc["delta_kld"]["se"])
    rows["delta_top1"] = (doc["delta_top1"]["delta"], doc["delta_top1"]["se"])
    rows["bytes_ratio"] = (doc["bytes_ratio"], None)
    rows["total_bytes"] = (float(doc["total_bytes"]), None)
    if doc["llama_cpp"] and "kld" in doc["llama_cpp"]:
        rows["llamacpp_kld"] = tuple(doc["llama_cpp"]["kld"])
    out: dict = {"alias": SHIP_TASK}
    for metric, (value, se) in rows.items():
        out[f"{metric},none"] = value
        out[f"{metric}_stderr,none"] = "N/A" if se is None else se
    return out


def write_card(out: Path, spec: RunSpec, loaded, doc: dict, bits: tuple[float, float]) -> None:
    """``mixviz-recipe.json`` (the recipe as mixviz reads it: ``Recipe.load``) and a short
    model card."""
    recipe = {
        "format": "mixviz.recipe",  # mixviz.report.recipe's format, which sits above runs
        "version": 1,
        "model": spec.model,
        "model_hash": loaded.model_hash,
        "ignore_scale_bits": False,
        "provenance": {"strategy": spec.strategy, "budget": spec.budget, "format": doc["format"]},
        "layers": dict(loaded.plan),
    }
    atomic_write_json(out / RECIPE_FILE, recipe)
    with_scale, no_scale = bits
    counts = Counter(loaded.plan.values())
    tuning = "RTN" if spec.quant.iters == 0 else f"{spec.quant.iters} iterations"
    mem = dict((m, (v, se)) for m, v, se in doc["kld_memory"])
    dsk = dict((m, (v, se)) for m, v, se in doc["kld_reloaded"])
    d = doc["delta_kld"]
    lines = [
        f"# {spec.model} — mixed-precision {doc['format']} checkpoint written by mixviz",
        "",
        f"- Recipe: `{RECIPE_FILE}` ({len(loaded.plan)} linear layers: "
        + ", ".join(f"{n} × {o}" for o, n in counts.most_common())
        + ")",
        f"- Average bits: {with_scale:.4f} with scale bits, {no_scale:.4f} without",
        (
            "- Quantized and written by llama.cpp's `llama-quantize` (ggml's own quantizers"
            + (", with an importance matrix)" if spec.quant.imatrix else ")")
            if doc.get("writer") == "llama-quantize"
            else f"- Quantized by auto-round ({tuning}), written with its `{doc['format']}` "
            "exporter"
        ),
        f"- Bytes of the quantized linears on disk ÷ predicted: {doc['bytes_ratio']:.4f}",
        f"- KLD to the unquantized model over {int(mem['tokens'][0])} held-out tokens "
        "(Python's pydoc topics, evaluation part; ± = se over 512-token windows):",
        f"  in memory {mem['kld'][0]:.5f} ± {mem['kld'][1]:.5f}, reloaded from these files "
        f"{dsk['kld'][0]:.5f} ± {dsk['kld'][1]:.5f}; paired Δ {d['delta']:+.2e} "
        f"[{d['lo']:+.2e}, {d['hi']:+.2e}]",
    ]
    if doc.get("llama_cpp") and "kld" in doc["llama_cpp"]:
        k, se = doc["llama_cpp"]["kld"]
        lines.append(f"- llama.cpp KLD (llama-perplexity, vs a BF16 GGUF): {k:.5f} ± {se:.5f}")
    lines.append(f"- {vllm_line(doc.get('vllm'))}")
    lines.append(f"- Verified on reload (formats from the files, KLD, probes): {doc['ok']}")
    atomic_write_bytes(out / "README.md", ("\n".join(lines) + "\n").encode())


def ship_document(run_id: str) -> dict | None:
    """``ship.json`` of a run that wrote a checkpoint, or None."""
    path = runs_dir() / run_id / "ship.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
