"""The ``kl`` metric fanned out over Ray tasks: one task per unit of layers, scores merged.

``kl`` scores one layer at a time, so its work splits cleanly: each unit (the layers of one
transformer block, with every option) runs as a Ray task that loads the model itself, builds
the same calibration windows and runs :func:`~mixviz.sensitivity.metrics.kl.kl` on its layers only.
The merged scores are those of one process; the caller builds the Profile as usual.

>>> spec = ProfileSpec(metric="kl", nsamples=16, seqlen=256)  # doctest: +SKIP
>>> prof = profile_model("tiny", spec, backend="ray", ray_address="10.0.0.5:6379")  # doctest: +SKIP
>>> prof == profile_model("tiny", spec)  # doctest: +SKIP
True

Workers must see this package and the same caches: each task gets ``PYTHONPATH`` (this
checkout), ``MIXVIZ_CACHE``/``MIXVIZ_MODELS`` and the ``HF_*``/``TRANSFORMERS_*`` settings of
the caller, so, as for the ``ray`` run backend, the cluster shares this filesystem.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mixviz.errors import MixvizError
from mixviz.models.device import CPU, CUDA
from mixviz.models.inventory import Layer
from mixviz.paths import worker_env
from mixviz.sensitivity.blocks import by_block

if TYPE_CHECKING:
    from mixviz.models.loading import ModelRef
    from mixviz.models.text import Corpus
    from mixviz.sensitivity.spec import ProfileSpec

_POLL_S = 0.5  # how often a running fan-out calls ``check()``

Scores = dict[tuple[str, str], float]


def split_units(layers: list[Layer]) -> list[list[Layer]]:
    """The layers grouped into units of work, one per block (``lm_head`` a unit of its own),
    in the order given.

    >>> mk = lambda n, b: Layer(n, b, "o_proj", 8, 8, 64, None)
    >>> units = split_units([mk("a", 0), mk("b", 1), mk("c", 0), mk("lm_head", None)])
    >>> [[x.name for x in u] for u in units]
    [['a', 'c'], ['b'], ['lm_head']]
    """
    return list(by_block(layers).values())


def kl_over_ray(
    ref: ModelRef,
    layers: list[Layer],
    spec: ProfileSpec,
    corpus: Corpus,
    where,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    check: Callable[[], None] | None = None,
) -> Scores:
    """``kl`` scores of ``layers`` × the options of ``spec``, one Ray task per
    :func:`split_units` unit, at ``spec.ray_address``, on ``spec.nsamples`` × ``spec.seqlen``
    tokens of ``corpus``.

    ``where`` is the resolved ``(torch.device, torch.dtype)``; a CUDA device asks Ray for one
    GPU per task (which the task sees as ``cuda``). ``progress(done, total, msg)`` counts kl's
    steps (one per quantized layer and option) and moves once per finished unit. ``check()`` is
    called while waiting (about twice a second): what it raises (the profiler's ``Cancelled``)
    ends the fan-out, and the tasks still pending are cancelled, as on any failure.
    """
    schemes = spec.schemes()
    ray = _ray()
    dev, dtype = where
    on_gpu = dev.type == CUDA
    units = split_units(layers)
    cost = [len(u) * sum(s.bits < 16 for s in schemes) for u in units]
    total, done = sum(cost), 0
    connected, pending = _connect(ray, spec.ray_address), {}
    try:
        run = ray.remote(_score_unit).options(
            num_cpus=1,
            num_gpus=1 if on_gpu else 0,
            runtime_env={"env_vars": worker_env(settings_only=True)},
            max_retries=0,  # a task that dies (out of memory, say) is reported, not re-run
        )
        shared = ray.put((ref, schemes, corpus, spec.nsamples, spec.seqlen))
        device, dt = CUDA if on_gpu else CPU, str(dtype).removeprefix("torch.")
        pending = {run.remote(shared, u, device, dt): i for i, u in enumerate(units)}
        if progress:
            progress(0, total, f"kl on {ref.name}: {len(units)} units over Ray")
        scores: Scores = {}
        while pending:
            if check:
                check()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
            for task in ready:
                i = pending.pop(task)
                scores.update(_result(ray, task))
                done += cost[i]
                if progress:
                    progress(done, total, f"kl unit {len(units) - len(pending)}/{len(units)}")
        return scores
    finally:
        for task in pending:  # cancelled, or another unit failed: stop the rest
            ray.cancel(task, force=True)
        if connected:
            ray.shutdown()


def _score_unit(shared, layers: list[Layer], device: str, dtype: str) -> Scores:
    """One Ray task: load the model, build the calibration windows, kl on ``layers``."""
    import torch

    from mixviz.models.loading import load_model
    from mixviz.models.text import token_windows
    from mixviz.sensitivity.metrics import METRICS
    from mixviz.sensitivity.metrics.kl import kl

    ref, schemes, corpus, nsamples, seqlen = shared
    model, tok = load_model(ref, dtype=dtype, device=device)
    ids = token_windows(tok, corpus, nsamples, seqlen).to(model.device)
    torch.manual_seed(0)  # as the in-process profiler does
    return kl(model, layers, schemes, ids, lambda msg: None, batch_size=METRICS["kl"].batch_size)


def _result(ray, task) -> Scores:
    """A finished task's scores; its failure as one line (a MixvizError keeps its message)."""
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(task)
    except RayTaskError as e:
        cause = e.cause
        if isinstance(cause, MixvizError):
            raise MixvizError(str(cause)) from None
        if cause is not None:
            raise cause from None
        raise
    except RayError as e:  # the worker died (killed, out of memory) or the node was lost
        raise MixvizError(f"a kl task failed on Ray: {str(e).strip()[:300]}") from None


def _ray():
    try:
        import ray
    except ImportError:
        raise MixvizError("--backend ray needs `pip install 'ray[default]'`") from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """Connect to Ray unless this process already is; True when this call connected.

    ``address`` (else Ray's own ``$RAY_ADDRESS``) is what ``ray.init`` takes: ``host:port`` of
    the head's GCS, ``ray://host:port``, or ``auto``; with none, Ray's default (a local Ray).
    Not ``$MIXVIZ_RAY_ADDRESS``: the run backend's address is the dashboard's Jobs API URL,
    which ``ray.init`` cannot use. The head must answer within seconds (``ray.init`` itself
    would retry for minutes).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        raise MixvizError(
            f"profiling over Ray needs the cluster address (host:6379, ray://host:10001 or "
            f"auto), not the dashboard URL {address!r} that runs are submitted to"
        )
    if address and address not in ("auto", "local"):
        _check_reachable(address)
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as e:
        where = address or "a local Ray"
        raise MixvizError(f"cannot start Ray tasks on {where}: {str(e).strip()[:200]}") from None
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with the address named, when nothing listens at ``address``."""
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise MixvizError(f"bad Ray address {address!r}: use host:port, ray://host:port or auto")
    t0 = time.monotonic()
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        waited = time.monotonic() - t0
        raise MixvizError(f"Ray is not reachable at {address} ({e}; {waited:.0f} s)") from None
