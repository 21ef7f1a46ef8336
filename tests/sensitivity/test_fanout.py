"""``kl`` fanned out over Ray tasks against a real local Ray head (2 CPUs, so 2 workers): the
same Profile as one process, progress per unit, cancel, and the clear errors.

The head is started as in ``test_ray_backend.py`` (its own session, temp folder and free
ports; teardown signals its process group only), but on a known GCS port: ``ray.init`` takes
the cluster address, not the dashboard URL the Jobs API uses.
"""

from __future__ import annotations

import pytest
from rayhead import free_port

from mixviz import cli
from mixviz.errors import MixvizError
from mixviz.sensitivity.profile import Cancelled, profile_model

# 3 blocks of tiny: 3 units over 2 workers, so one worker runs two of them
SMALL = {"options": "MXFP4,MXFP8", "nsamples": 2, "seqlen": 32, "layers": r"layers\.[0-2]\."}


@pytest.fixture(scope="module")
def ray_gcs(ray_head):
    """The ``host:port`` of the local Ray head's GCS (2 CPUs, no GPU)."""
    return ray_head.gcs


@pytest.mark.ray
def test_kl_over_two_workers_is_the_in_process_profile(ray_gcs, tiny_ref):
    local = profile_model(tiny_ref, metric="kl", use_cache=False, **SMALL)
    calls = []
    fanned = profile_model(
        tiny_ref,
        metric="kl",
        backend="ray",
        ray_address=ray_gcs,
        progress=lambda done, total, msg: calls.append((done, total)),
        **SMALL,
    )
    assert [(r.layer, r.option, r.bits) for r in fanned.rows] == [
        (r.layer, r.option, r.bits) for r in local.rows
    ]
    # rtol 1e-6, not ==: same code, batches and dtype, but a Ray task runs torch on 1 thread
    # (OMP_NUM_THREADS = its num_cpus) and this process on several, which may change the order
    # of a reduction's sums and so the last bits. (Measured here: all 42 rows bit-identical.)
    for a, b in zip(fanned.rows, local.rows, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-6, abs=1e-12), (a, b)
    assert any(r.score > 0 for r in fanned.rows)
    # one call to start, then one per finished unit (a block), ending at the total
    total = len(fanned.layers)  # one kl step per layer and quantized option: 2 options
    assert len(calls) == 1 + 3 and calls[0] == (0, 2 * total) and calls[-1] == (2 * total,) * 2
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    # the backend is not part of the cache key: the local profiler finds what Ray computed
    cached = profile_model(tiny_ref, metric="kl", compute=False, **SMALL)
    assert cached is not None and cached.rows == fanned.rows and cached.key == local.key


@pytest.mark.ray
def test_cancel_stops_the_fan_out(ray_gcs, tiny_ref):
    with pytest.raises(Cancelled):
        profile_model(
            tiny_ref,
            metric="kl",
            backend="ray",
            ray_address=ray_gcs,
            use_cache=False,
            cancel=lambda: True,
            **SMALL,
        )
    import ray

    assert not ray.is_initialized()  # the connection this call made is closed again


def test_only_kl_fans_out(tiny_ref):
    with pytest.raises(MixvizError, match="only kl fans out over Ray"):
        profile_model(tiny_ref, metric="fisher", backend="ray", **SMALL)
    with pytest.raises(MixvizError, match="unknown backend"):
        profile_model(tiny_ref, metric="kl", backend="dask", **SMALL)


def test_unreachable_or_dashboard_address_is_a_clear_error(tiny_ref):
    pytest.importorskip("ray")
    nothing = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(MixvizError, match=f"Ray is not reachable at {nothing}"):
        profile_model(
            tiny_ref, metric="kl", backend="ray", ray_address=nothing, use_cache=False, **SMALL
        )
    with pytest.raises(MixvizError, match="not the dashboard URL"):
        profile_model(
            tiny_ref,
            metric="kl",
            backend="ray",
            ray_address="http://127.0.0.1:8265",
            use_cache=False,
            **SMALL,
        )


def test_cli_backend_flags_reach_the_profiler(capsys):
    common = ["profile", "tiny", "--nsamples", "2", "--seqlen", "32", "--no-cache"]
    assert cli.main([*common, "--metric", "fisher", "--backend", "ray"]) == 2
    assert "only kl fans out over Ray" in capsys.readouterr().err
    url = ["--metric", "kl", "--backend", "ray", "--ray-address", "http://127.0.0.1:8265"]
    assert cli.main([*common, *url]) == 2
    assert "not the dashboard URL 'http://127.0.0.1:8265'" in capsys.readouterr().err
