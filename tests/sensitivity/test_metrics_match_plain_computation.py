"""fisher, hessian and kl against a second, plain computation written here.

A tiny random Llama (hidden 64, 2 blocks, vocab 128, biases on, untied lm_head) built from a
``LlamaConfig``; every block linear and lm_head is scored. Q(W) and Q(x) come from
``LayerQuantizer`` (auto-round's quantizers, which the metrics also use); everything else is
computed here the direct way:

- fisher: per batch, ``torch.autograd.grad`` of the mean token cross-entropy (computed here
  from the logits) w.r.t. every weight and every linear's own input (a forward pre-hook returns
  ``x.view_as(x)``, a node of its own), then ``½ Σ (g_W ⊙ ΔW)² + ½ Σ (g_x ⊙ (x − Q(x)))²``.
- hessian: every linear's input X from one plain full-model forward, then ``‖X ΔWᵀ‖²``
  (= tr(ΔW XᵀX ΔWᵀ)) for weight-only formats and ``‖(XWᵀ+b) − (Q(X)Q(W)ᵀ+b)‖²`` for the
  activation-quantizing MX formats, in float64.
- kl: the layer really quantized (weight replaced by Q(W); for MX formats its input quantized
  by a pre-hook), a full-model forward, and the mean over tokens of KL(p_ref ‖ p_q) in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from fakes import tiny_llama

from mixviz.models.inventory import inventory
from mixviz.models.schemes import SCHEMES
from mixviz.sensitivity.metrics.fisher import fisher
from mixviz.sensitivity.metrics.hessian import hessian
from mixviz.sensitivity.metrics.kl import kl
from mixviz.sensitivity.quantizers import LayerQuantizer

# all available for in_features 64 (and 128): two MX formats (activations quantized too),
# two grouped int formats, and BF16 (score 0)
SCHEMES_USED = [SCHEMES[n] for n in ("MXFP4", "MXFP8", "W4A16G32", "W2A16G64", "BF16")]
REL = 1e-4


def _llama(seed: int = 0):
    model = tiny_llama(
        seed,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        initializer_range=0.08,
    )
    with torch.no_grad():  # non-zero biases and norm weights: every term is exercised
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0, 0.05)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and far faster on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return _llama()


@pytest.fixture(scope="module")
def layers(model):
    out = [x for x in inventory(model) if x.block is not None or x.kind == "lm_head"]
    assert len(out) == 2 * 7 + 1
    return out


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(1))


def _compare(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    bad = {
        k: (got[k], want[k])
        for k in want
        if got[k] != pytest.approx(want[k], rel=REL, abs=1e-12 * max(abs(v) for v in want.values()))
    }
    assert not bad, f"{len(bad)} of {len(want)} scores differ (got, want): {bad}"


def _linears(model, layers) -> dict[str, torch.nn.Linear]:
    mods = dict(model.named_modules())
    return {x.name: mods[x.name] for x in layers}


def _quantizers(lins: dict, schemes) -> dict:
    return {(n, s.name): LayerQuantizer(lin, s) for n, lin in lins.items() for s in schemes}


# --------------------------------------------------------------------------- fisher


def _fisher_reference(model, layers, schemes, ids, batch_size, act=True):
    model = copy.deepcopy(model)
    model.requires_grad_(True)
    lins = _linears(model, layers)
    quant = _quantizers(lins, schemes)
    names = list(lins)
    scores = {(n, s.name): 0.0 for n in names for s in schemes}
    inputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(mod, args):
            own = args[0].view_as(args[0])
            inputs[name] = own
            return (own, *args[1:])

        return hook

    handles = [lins[n].register_forward_pre_hook(keep(n)) for n in names]
    try:
        for batch in ids.split(batch_size):
            inputs.clear()
            logits = model(input_ids=batch, use_cache=False).logits
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
            )
            grads = torch.autograd.grad(
                loss, [lins[n].weight for n in names] + [inputs[n] for n in names]
            )
            g_w, g_x = grads[: len(names)], grads[len(names) :]
            with torch.no_grad():
                for n, gw, gx in zip(names, g_w, g_x, strict=True):
                    x = inputs[n].detach()
                    for s in schemes:
                        q = quant[(n, s.name)]
                        dw = lins[n].weight - q.weight()
                        term = 0.5 * (gw.double() * dw.double()).pow(2).sum().item()
                        if act and q.act is not None:
                            dx = (x - q.act(x)).double()
                            term += 0.5 * (gx.double() * dx).pow(2).sum().item()
                        scores[(n, s.name)] += term
    finally:
        for h in handles:
            h.remove()
    return scores


@pytest.mark.parametrize("batch_size", [1, 2])
def test_fisher_matches_per_batch_autograd(model, layers, ids, batch_size):
    want = _fisher_reference(model, layers, SCHEMES_USED, ids, batch_size)
    got = fisher(copy.deepcopy(model), layers, SCHEMES_USED, ids, lambda m: None, batch_size)
    _compare(got, want)
    assert all(want[(x.name, "MXFP4")] > 0 and want[(x.name, "BF16")] == 0 for x in layers)


def test_fisher_quantizes_an_input_shared_by_layers_once(model, layers, ids, monkeypatch):
    """q/k/v (and gate/up) read one tensor: its Q(x) is computed once per option and batch —
    4 inputs per block + lm_head's instead of 15 layers' — and each Q(W) once per batch (in
    pieces of rows, here each weight in more than one piece)."""
    import mixviz.sensitivity.metrics.fisher as metrics
    from mixviz.sensitivity import quantizers

    real, shapes = quantizers.quant_mx_fast, []

    def counting(t, *args, **kwargs):
        shapes.append(t.dim())
        return real(t, *args, **kwargs)

    monkeypatch.setattr(quantizers, "quant_mx_fast", counting)
    monkeypatch.setattr(metrics, "_CPU_PIECE", 64 * 24)  # 24 rows of a 64-wide weight
    fisher(copy.deepcopy(model), layers, [SCHEMES["MXFP4"]], ids, lambda m: None, 1)
    lins = _linears(model, layers).values()
    pieces = sum(-(-n.out_features // (64 * 24 // n.in_features)) for n in lins)
    assert pieces > len(layers)
    assert shapes.count(2) == pieces * len(ids)
    assert shapes.count(3) == (2 * 4 + 1) * len(ids)


def test_fisher_in_pieces_equals_fisher_whole(model, layers, ids, monkeypatch):
    import mixviz.sensitivity.metrics.fisher as metrics

    whole = fisher(copy.deepcopy(model), layers, SCHEMES_USED, ids, lambda m: None, 1)
    monkeypatch.setattr(metrics, "_CPU_PIECE", 64 * 5)
    _compare(fisher(copy.deepcopy(model), layers, SCHEMES_USED, ids, lambda m: None, 1), whole)


def test_fisher_activation_term_is_a_real_share(model, layers, ids):
    """The MX scores carry a sizeable activation term (in the reference), so the comparison
    above would fail if fisher dropped or doubled it."""
    full = _fisher_reference(model, layers, SCHEMES_USED, ids, 1)
    weights = _fisher_reference(model, layers, SCHEMES_USED, ids, 1, act=False)
    for x in layers:
        for s in ("MXFP4", "MXFP8"):
            act = full[(x.name, s)] - weights[(x.name, s)]
            assert act > 0.01 * full[(x.name, s)], (x.name, s, act, full[(x.name, s)])


# --------------------------------------------------------------------------- hessian


def _hessian_reference(model, layers, schemes, ids):
    lins = _linears(model, layers)
    quant = _quantizers(lins, schemes)
    xs: dict[str, list[torch.Tensor]] = {n: [] for n in lins}
    handles = [
        lin.register_forward_pre_hook(
            lambda mod, args, n=n: xs[n].append(args[0].detach().reshape(-1, args[0].shape[-1]))
        )
        for n, lin in lins.items()
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    scores = {}
    with torch.no_grad():
        for n, lin in lins.items():
            x = torch.cat(xs[n])
            w = lin.weight
            b = lin.bias.double() if lin.bias is not None else 0.0
            for s in schemes:
                q = quant[(n, s.name)]
                if s.bits >= 16:
                    scores[(n, s.name)] = 0.0
                elif q.act is None:
                    dw = (w - q.weight()).double()
                    scores[(n, s.name)] = (x.double() @ dw.T).pow(2).sum().item()
                else:
                    y = x.double() @ w.double().T + b
                    yq = q.act(x).double() @ q.weight().double().T + b
                    scores[(n, s.name)] = (y - yq).pow(2).sum().item()
    return scores


def test_hessian_matches_explicit_input_collection(model, layers, ids):
    want = _hessian_reference(model, layers, SCHEMES_USED, ids)
    got = hessian(copy.deepcopy(model), layers, SCHEMES_USED, ids, lambda m: None, batch_size=2)
    _compare(got, want)


# --------------------------------------------------------------------------- kl


def _kl_reference(model, layers, schemes, ids):
    lins = _linears(model, layers)
    n_tokens = ids.numel()
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.double(), -1)
        p = ref.exp()
        scores = {}
        for n, lin in lins.items():
            for s in schemes:
                if s.bits >= 16:
                    scores[(n, s.name)] = 0.0
                    continue
                q = LayerQuantizer(lin, s)
                original = lin.weight.data
                lin.weight.data = q.weight()
                hk = None
                if q.act is not None:
                    hk = lin.register_forward_pre_hook(lambda m, a, qa=q.act: (qa(a[0]), *a[1:]))
                try:
                    logq = torch.log_softmax(
                        model(input_ids=ids, use_cache=False).logits.double(), -1
                    )
                finally:
                    lin.weight.data = original
                    if hk is not None:
                        hk.remove()
                kl_per_token = (p * (ref - logq)).sum(-1)
                assert kl_per_token.shape == ids.shape
                scores[(n, s.name)] = kl_per_token.sum().item() / n_tokens
    return scores


def test_kl_matches_quantizing_the_layer_for_real(model, layers, ids):
    want = _kl_reference(copy.deepcopy(model), layers, SCHEMES_USED, ids)
    got = kl(copy.deepcopy(model), layers, SCHEMES_USED, ids, lambda m: None, batch_size=2)
    _compare(got, want)
    assert all(want[(x.name, "MXFP4")] > want[(x.name, "MXFP8")] > 0 for x in layers)
