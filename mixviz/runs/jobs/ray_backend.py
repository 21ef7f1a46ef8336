"""The Ray backend: the same worker submitted through Ray's Jobs API, with the GPU and host
memory each run asks Ray for."""

from __future__ import annotations

import shlex
import sys
import time

from mixviz.errors import MixvizError
from mixviz.models.device import CUDA, check_dtype, cuda_index
from mixviz.paths import worker_env
from mixviz.runs.jobs.submission import ACTIVE, Submitted, store_once
from mixviz.runs.liveness import mark_stale
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import RunRow, Store


class RayBackend:
    """Submits the worker through Ray's Jobs API; assumes the cache folder is shared."""

    name = "ray"

    def __init__(self, address: str, store: Store | None = None):
        self.store = store or Store()
        self.address = address
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise MixvizError("the ray backend needs `pip install 'ray[default]'`") from None
        try:
            self.client = JobSubmissionClient(address)
        except Exception as e:
            raise MixvizError(f"cannot reach Ray at {address}: {str(e)[:200]}") from None

    def submit(self, spec: RunSpec, force: bool = False) -> str:
        """:func:`submit`'s run id."""
        return self.enqueue(spec, force).id

    def enqueue(self, spec: RunSpec, force: bool = False) -> Submitted:
        # refuses a spec Ray cannot place before it is stored
        resources = ray_resources(spec, model_size(spec))
        sub = store_once(self.store, spec, self.name, force)
        if sub.reused:
            return sub
        run_id = sub.id
        env = worker_env(settings_only=True)
        try:
            self.client.submit_job(
                entrypoint=entrypoint(run_id),
                submission_id=run_id,
                runtime_env={"env_vars": env},
                **resources,
            )
        except Exception as e:
            self.store.transition(
                run_id,
                ("queued",),
                status="failed",
                finished=time.time(),
                error=f"Ray refused the job: {str(e)[:300]}",
            )
            raise MixvizError(f"Ray at {self.address} refused the job: {str(e)[:200]}") from None
        # Guarded: the worker may already have claimed the run (running), or a cancel landed.
        if not self.store.transition(
            run_id, ("queued",), backend_id=run_id, status="starting", heartbeat=time.time()
        ):
            self.store.update(run_id, backend_id=run_id)
            if self.store.get(run_id).status == "cancelled":
                self._stop(run_id)
        return sub

    def _stop(self, run_id: str) -> None:
        try:
            self.client.stop_job(run_id)
        except Exception:
            pass

    def kick(self) -> list[str]:
        self.reconcile()
        return []

    def cancel(self, run_id: str) -> RunRow:
        if self.store.cancel(run_id, ACTIVE) is None:
            raise MixvizError(f"run {run_id} is already {self.store.get(run_id).status}")
        self._stop(run_id)
        return self.store.get(run_id)

    def reconcile(self) -> list[str]:
        """A Ray job that ended without the worker recording a final state is ``lost``; so is a
        running one Ray cannot tell about whose worker stopped sending heartbeats."""
        lost = []
        for row in self.store.list(("starting", "running")):
            if row.backend != self.name:
                continue
            try:
                status = str(self.client.get_job_status(row.id)).rsplit(".", 1)[-1]
            except Exception:
                lost += mark_stale(self.store, [row], "Ray cannot tell about the job")
                continue
            if status in ("FAILED", "STOPPED", "SUCCEEDED"):
                try:
                    logs = self.client.get_job_logs(row.id)[-1500:]
                except Exception:
                    logs = ""
                if self.store.transition(
                    row.id,
                    ("starting", "running"),
                    status="lost",
                    finished=time.time(),
                    error=f"Ray job ended {status}: {logs}",
                ):
                    lost.append(row.id)
        return lost


def ray_resources(spec: RunSpec, size: tuple[int, int] | None = None) -> dict:
    """What a run asks Ray for: one GPU when its device is CUDA (so a cluster with several GPUs
    runs several runs at once, one per GPU), and, given the model's ``size`` (parameters,
    vocabulary: :func:`model_size`), the host memory it needs (:func:`run_memory_bytes`), so
    Ray places no more runs on a node than its memory holds.

    ``auto`` asks for no GPU: on Ray the submitting machine cannot tell where the job will land,
    so a run that must have one says ``--device cuda``.

    >>> ray_resources(RunSpec(model="m", recipe=None, tasks=("t",), device=CUDA))
    {'entrypoint_num_gpus': 1}
    >>> ray_resources(RunSpec(model="m", recipe=None, tasks=("t",)))
    {}
    """
    out = {} if size is None else {"entrypoint_memory": run_memory_bytes(*size, spec)}
    index = cuda_index(spec.device)
    if index is None:
        return out
    if index != 0:
        # the job sees only the GPU Ray gave it, as its first device: an index means nothing
        raise MixvizError(f"on Ray a run asks for a GPU with device {CUDA}, not {spec.device}")
    return {"entrypoint_num_gpus": 1, **out}


def model_size(spec: RunSpec) -> tuple[int, int]:
    """``(parameters, vocabulary size)`` of the run's model, from its config (no weights)."""
    from mixviz.models.loading import meta_model, resolve_model

    ref = resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    model = meta_model(ref)
    return sum(p.numel() for p in model.parameters()), int(model.config.vocab_size)


RUNTIME_BYTES = 2 * 2**30
"""Host memory of a worker before its model: Python with torch, transformers, auto-round and
lm-eval imported, and the KLD reference."""


LOGITS_TOKENS = 1024
"""Tokens per sequence assumed for lm-eval's logits when sizing a run (a batch's logits and
their log-softmax are each ``batch × tokens × vocabulary`` floats; the study's tasks, zero-shot,
stay under it)."""


def run_memory_bytes(params: int, vocab: int, spec: RunSpec) -> int:
    """Host memory a run asks Ray for, from the model's size: on the CPU, the weights twice
    (the model and auto-round's working copy while it quantizes) in the run's precision plus
    one batch of float32 logits and their log-softmax; on CUDA, the weights once (they pass
    through host memory while loading); and :data:`RUNTIME_BYTES` either way. It errs high:
    the demo's full-size BF16 run on the CPU peaked at 1.71 GB RSS (sampled every 2 s) against
    6.0 GiB asked, its tasks' sequences being far shorter than :data:`LOGITS_TOKENS`.

    >>> from dataclasses import replace
    >>> spec = RunSpec(model="m", recipe=None, tasks=("t",))
    >>> round(run_memory_bytes(135_000_000, 49152, spec) / 2**30, 1)  # the demo, CPU float32
    6.0
    >>> round(run_memory_bytes(8_000_000_000, 128256, replace(spec, device=CUDA)) / 2**30, 1)
    16.9
    """
    cuda = cuda_index(spec.device) is not None
    dtype = check_dtype(spec.dtype)
    size = 4 if dtype == "float32" or (dtype == "auto" and not cuda) else 2
    if cuda:
        return RUNTIME_BYTES + params * size
    logits = 2 * spec.batch_size * LOGITS_TOKENS * vocab * 4
    return RUNTIME_BYTES + 2 * params * size + logits


def entrypoint(run_id: str) -> str:
    """The worker's shell command line for Ray, every value quoted."""
    return shlex.join([sys.executable, "-m", "mixviz.runs.jobs.worker", run_id])
