"""Tests of the search space: operations, supernet, architect, SGAS decisions, genotypes."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from NAS import genotypes
from NAS.architect import Architect
from NAS.genotypes import Auto_FERNet, Genotype, GenotypeError
from NAS.model_search import EDGES, PRUNED, UNDECIDED, MixedOp, SearchNetwork, edge_sources, weighted_sum
from NAS.operations import PRIMITIVES, SepConv, StridedDilatedConv, build_op
from NAS.sgas import (decide_edge, derive_genotype, edge_scores, histogram_intersection, normalize,
                      prune_full_nodes, total_epochs)


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [11, 12])
def test_operation_output_shape(name, stride, size):
    op = build_op(name, 6, stride, affine=False, pool_bn=True)
    x = torch.randn(2, 6, size, size)
    out = op(x)
    expected = size if stride == 1 else (size + 1) // 2
    assert out.shape == (2, 6, expected, expected)


def test_ghost_applies_stride_in_pointwise_conv():
    op = build_op("ghost", 7, 2)
    assert op.primary_conv[0].stride == (2, 2)
    assert op.primary_conv[0].out_channels == 4
    assert op.cheap_operation[0].stride == (1, 1)
    assert op(torch.randn(2, 7, 12, 12)).shape == (2, 7, 6, 6)


def test_unknown_operation_rejected():
    with pytest.raises(ValueError, match="unknown operation 'conv_7x7'"):
        build_op("conv_7x7", 4, 1)


@pytest.mark.parametrize("kernel,padding", [(3, 2), (5, 4)])
@pytest.mark.parametrize("size", [11, 22, 44])
def test_strided_dilated_conv_matches_dilated_conv(kernel, padding, size):
    conv = StridedDilatedConv(4, kernel, padding)
    x = torch.randn(2, 4, size, size)
    reference = F.conv2d(x, conv.weight, None, stride=2, padding=padding, dilation=2, groups=4)
    assert torch.allclose(conv(x), reference, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_mixed_op_equals_weighted_sum(stride, memory_format):
    torch.manual_seed(0)
    mixed = MixedOp(6, stride).to(memory_format=memory_format)
    x = torch.randn(3, 6, 10, 10).contiguous(memory_format=memory_format).requires_grad_()
    weights = torch.softmax(torch.randn(len(PRIMITIVES)), 0).requires_grad_()
    out = mixed(x, F.relu(x), weights, UNDECIDED)
    grad = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, weights), grad)

    # Reference: every operation with its own leading ReLU, weighted and summed by hand,
    # with PyTorch's batch norm in place of the project's.
    def reference_op(index, inp):
        op = mixed.ops[index]
        inp = F.relu(inp) if mixed.wants_relu[index] else inp
        if getattr(op, "final_bn", None) is not None:
            y = op.features(inp)
            return F.batch_norm(y, None, None, training=True)
        return op(inp)

    x_ref = x.detach().clone().requires_grad_()
    w_ref = weights.detach().clone().requires_grad_()
    ref = sum(w_ref[i + 1] * reference_op(i, x_ref) for i in range(len(mixed.ops)))
    rx, rw = torch.autograd.grad(ref, (x_ref, w_ref), grad)
    assert torch.allclose(out, ref, atol=1e-4)
    assert torch.allclose(gx, rx, atol=1e-4)
    assert torch.allclose(gw, rw, atol=1e-3)
    assert gw[0] == 0  # ``none`` adds nothing and is never computed


def test_supernet_forward_backward():
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=7, layers=3)
    x = torch.randn(2, 1, 44, 44)
    logits = model(x)
    assert logits.shape == (2, 7)
    F.cross_entropy(logits, torch.tensor([0, 6])).backward()
    assert all(p.grad is not None for p in model.arch_parameters())
    assert model.stem[0].weight.grad is not None


def test_supernet_partial_channels_forward():
    model = SearchNetwork(C=4, layers=3, partial_channels=2)
    assert model(torch.randn(2, 1, 44, 44)).shape == (2, 7)
    with pytest.raises(ValueError, match="partial_channels"):
        SearchNetwork(C=4, layers=3, partial_channels=3)


def test_supernet_rejects_bad_shape_arguments():
    with pytest.raises(ValueError, match="layers"):
        SearchNetwork(C=4, layers=2)
    with pytest.raises(ValueError, match="init_channels"):
        SearchNetwork(C=5, layers=3)


def _record_calls(mixed: MixedOp) -> set[int]:
    """Return a set that collects the index of every operation of ``mixed`` that computes."""
    calls: set[int] = set()
    for index, op in enumerate(mixed.ops):
        for module in op.modules():
            module.register_forward_pre_hook(lambda module, inputs, index=index: calls.add(index))
    return calls


def test_decided_edge_runs_only_its_operation():
    model = SearchNetwork(C=4, layers=3)
    sep5 = PRIMITIVES.index("sep_conv_5x5")
    decisions = [UNDECIDED] * EDGES
    decisions[0] = sep5
    decisions[1] = PRUNED
    model.set_decisions({"normal": decisions, "reduce": [UNDECIDED] * EDGES})
    decided_calls = _record_calls(model.cells[0].edges[0])
    pruned_calls = _record_calls(model.cells[0].edges[1])
    open_calls = _record_calls(model.cells[0].edges[2])
    model(torch.randn(2, 1, 20, 20))
    assert decided_calls == {sep5 - 1}
    assert pruned_calls == set()
    # An open edge runs every operation but skip_connect, whose output is the state itself.
    skip = PRIMITIVES.index("skip_connect") - 1
    assert sorted(open_calls) == [i for i in range(len(PRIMITIVES) - 1) if i != skip]
    assert not model.alphas_normal[0].requires_grad
    assert not model.alphas_normal[1].requires_grad
    assert model.alphas_normal[2].requires_grad


def _run_supernet(model: SearchNetwork, x: torch.Tensor, y: torch.Tensor, share: bool):
    """Train-mode forward and backward with the cells' sharing of pooling maps on or off."""
    for cell in model.cells:
        cell.share_pooling = share
    model.zero_grad()
    out = model(x)
    F.cross_entropy(out, y).backward()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    return out.detach(), grads, [b.clone() for b in model.buffers()]


def _run_eval(model: SearchNetwork, x: torch.Tensor, share: bool) -> torch.Tensor:
    """Eval-mode forward with the cells' sharing of pooling maps on or off."""
    for cell in model.cells:
        cell.share_pooling = share
    return model(x)


def test_shared_maps_match_per_edge_operations():
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=3).double()
    normal = [UNDECIDED] * EDGES
    normal[0] = PRIMITIVES.index("max_pool_3x3")  # decided edges keep their own operation
    normal[3] = PRUNED
    model.set_decisions({"normal": normal, "reduce": [UNDECIDED] * EDGES})
    x = torch.randn(3, 1, 16, 16, dtype=torch.double)
    y = torch.randint(0, 7, (3,))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    out, grads, buffers = _run_supernet(model, x, y, share=True)
    model.load_state_dict(start)
    ref_out, ref_grads, ref_buffers = _run_supernet(model, x, y, share=False)
    assert torch.allclose(out, ref_out, atol=1e-12)
    for grad, ref in zip(grads, ref_grads):
        assert (grad is None) == (ref is None)
        if grad is not None:
            assert torch.allclose(grad, ref, atol=1e-12)
    for buffer, ref in zip(buffers, ref_buffers):
        assert torch.allclose(buffer, ref, atol=1e-12)  # every pooling batch norm keeps its statistics

    model.eval()
    with torch.no_grad():
        shared_eval = _run_eval(model, x, share=True)
        per_edge_eval = _run_eval(model, x, share=False)
    assert torch.allclose(shared_eval, per_edge_eval, atol=1e-12)


def test_pooling_runs_once_per_state():
    model = SearchNetwork(C=4, layers=3)
    counts = {"normal": 0, "reduce": 0}
    for cell in model.cells:
        kind = "reduce" if cell.reduction else "normal"
        for mixed in cell.edges:
            mixed.ops[0].register_forward_hook(lambda *args, kind=kind: counts.__setitem__(kind, counts[kind] + 1))
    model(torch.randn(2, 1, 16, 16))
    normal_cells = sum(not cell.reduction for cell in model.cells)
    # 14 edges read 5 states; a reduction cell reads states 0 and 1 at stride 2 only.
    assert counts == {"normal": 5 * normal_cells, "reduce": 5 * (len(model.cells) - normal_cells)}


def test_weighted_sum_gradients():
    torch.manual_seed(0)
    maps = [torch.randn(2, 3, 4, 5, dtype=torch.double).contiguous(memory_format=torch.channels_last)
            .requires_grad_() for _ in range(3)]
    maps[2] = torch.randn(2, 3, 4, 5, dtype=torch.double, requires_grad=True)  # another layout
    coefficients = torch.rand(3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, *m: weighted_sum(c, m), (coefficients, *maps))
    with pytest.raises(ValueError, match="coefficients"):
        weighted_sum(coefficients[:2], maps)


@pytest.mark.parametrize("kernel, stride", [(3, 1), (5, 1), (3, 2)])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_sep_conv_recompute_matches_plain(kernel, stride, affine, memory_format):
    torch.manual_seed(0)
    plain = SepConv(4, 4, kernel, stride, kernel // 2, affine=affine).to(memory_format=memory_format)
    recomputed = copy.deepcopy(plain)
    recomputed.recompute = True
    start = torch.randn(3, 4, 9, 9).contiguous(memory_format=memory_format)
    results = []
    for op in (plain, recomputed):
        x = start.clone().requires_grad_()
        out = op(x)
        out.backward(torch.ones_like(out) + out.detach())
        grads = [x.grad] + [p.grad for p in op.parameters()]
        results.append((out.detach(), grads, [b.clone() for b in op.buffers()]))
    (out, grads, buffers), (ref_out, ref_grads, ref_buffers) = results[1], results[0]
    assert torch.allclose(out, ref_out, atol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        assert torch.allclose(grad, ref, atol=1e-4)
    for buffer, ref in zip(buffers, ref_buffers):
        assert torch.allclose(buffer.float(), ref.float(), atol=1e-6)  # statistics move once per step


def _saved_bytes(op: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages that autograd keeps for the backward of ``op(x)``."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        op(x)
    return sum(storages.values())


def test_recompute_keeps_two_fewer_maps():
    plain = SepConv(8, 8, 3, 1, 1, affine=False)
    recomputed = copy.deepcopy(plain)
    recomputed.recompute = True
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    one_map = x.numel() * x.element_size()
    assert _saved_bytes(recomputed, x) <= _saved_bytes(plain, x) - 2 * one_map


def test_set_decisions_rejects_invalid_values():
    model = SearchNetwork(C=4, layers=3)
    with pytest.raises(ValueError, match="invalid normal decisions"):
        model.set_decisions({"normal": [11] * EDGES, "reduce": [UNDECIDED] * EDGES})


def _hand_made_weights(peak_edge: int, peak_op: str) -> torch.Tensor:
    weights = torch.full((EDGES, len(PRIMITIVES)), 1.0)
    weights[:, 0] = 2.0  # every edge leans towards ``none``: low importance
    weights[peak_edge] = 1.0
    weights[peak_edge, PRIMITIVES.index(peak_op)] = 8.0
    return weights / weights.sum(dim=1, keepdim=True)


def test_decision_picks_expected_edge_and_operation():
    weights = _hand_made_weights(5, "sep_conv_5x5")
    decisions = [UNDECIDED] * EDGES
    score = edge_scores(weights)
    decision, new = decide_edge("normal", weights, decisions, score, epoch=9)
    assert decision.edge == 5
    assert decision.operation == "sep_conv_5x5"
    assert (decision.node, decision.source) == edge_sources()[5]
    assert new[5] == PRIMITIVES.index("sep_conv_5x5")
    assert new.count(UNDECIDED) == EDGES - 1


def test_decision_skips_decided_edges_but_scores_them():
    weights = _hand_made_weights(5, "sep_conv_5x5")
    weights[9] = _hand_made_weights(9, "conv_3x3")[9] * 0.999 + 0.001 / len(PRIMITIVES)
    decisions = [UNDECIDED] * EDGES
    decisions[5] = PRIMITIVES.index("sep_conv_5x5")
    score = edge_scores(weights)
    assert torch.argmax(score) == 5
    decision, _ = decide_edge("normal", weights, decisions, score, epoch=14)
    assert decision.edge == 9
    assert decision.operation == "conv_3x3"


def test_pruning_follows_two_decided_inputs():
    decisions = [UNDECIDED] * EDGES
    # Node 1 reads edges 2, 3, 4; deciding edges 2 and 4 prunes edge 3.
    decisions[2] = PRIMITIVES.index("conv_1x1")
    decisions[4] = PRIMITIVES.index("ghost")
    pruned = prune_full_nodes(decisions)
    assert pruned[3] == PRUNED
    assert pruned[2] == decisions[2]
    assert pruned[4] == decisions[4]
    assert all(pruned[e] == UNDECIDED for e in range(EDGES) if e not in (2, 3, 4))


def test_decide_edge_reports_pruned_edges():
    weights = _hand_made_weights(3, "dil_conv_3x3")
    decisions = [UNDECIDED] * EDGES
    decisions[2] = PRIMITIVES.index("conv_1x1")
    decision, new = decide_edge("reduce", weights, decisions, edge_scores(weights), epoch=9)
    assert decision.edge == 3
    assert decision.pruned == [4]
    assert new[4] == PRUNED


def test_decide_edge_without_candidates_raises():
    decisions = [PRUNED] * EDGES
    weights = torch.full((EDGES, len(PRIMITIVES)), 1 / len(PRIMITIVES))
    with pytest.raises(ValueError, match="no undecided normal edge"):
        decide_edge("normal", weights, decisions, edge_scores(weights), epoch=0)


def test_normalize_and_history_intersection():
    assert torch.equal(normalize(torch.tensor([2.0, 2.0])), torch.zeros(2))
    assert torch.allclose(normalize(torch.tensor([1.0, 3.0, 2.0])), torch.tensor([0.0, 1.0, 0.5]))
    current = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    history = [torch.tensor([[0.5, 0.5], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])]
    assert torch.allclose(histogram_intersection(history, current), torch.tensor([0.75, 0.5]))
    assert torch.equal(histogram_intersection([], current), torch.zeros(2))


def test_total_epochs_matches_schedule():
    assert total_epochs(9, 5, 5) == 50
    assert total_epochs(0, 1, 0) == 8


def test_derive_genotype_uses_decisions_then_weights():
    weights = torch.full((EDGES, len(PRIMITIVES)), 1 / len(PRIMITIVES))
    weights[1, PRIMITIVES.index("conv_3x3")] = 0.5
    decisions = [UNDECIDED] * EDGES
    decisions[0] = PRIMITIVES.index("sep_conv_3x3")
    genotype = derive_genotype({"normal": weights, "reduce": weights}, {"normal": decisions,
                                                                          "reduce": [UNDECIDED] * EDGES})
    assert genotype.normal[0] == ("sep_conv_3x3", 0)
    assert genotype.normal[1] == ("conv_3x3", 1)
    genotypes.validate(genotype)


def _virtual_validation_loss(model, alphas_flat, x_train, y_train, x_valid, y_valid, eta, momentum, weight_decay,
                             buffers):
    """L_val(w - eta * (momentum * v + dL_train/dw + wd * w), alpha) as a function of alpha."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters() if not n.startswith("alphas")]
    params = dict(model.named_parameters())
    alpha_names = [n for n in params if n.startswith("alphas")]
    alpha_values = dict(zip(alpha_names, alphas_flat.split(len(PRIMITIVES))))
    weights = [params[n].detach().requires_grad_() for n in names]

    def call(values, x):
        mapping = dict(zip(names, values))
        mapping.update(alpha_values)
        mapping.update({k: v.clone() for k, v in buffers.items()})
        return functional_call(model, mapping, (x,))

    train_loss = F.cross_entropy(call(weights, x_train), y_train)
    grads = torch.autograd.grad(train_loss, weights, create_graph=True, allow_unused=True)
    virtual = [w - eta * ((g if g is not None else 0) + weight_decay * w + momentum * buffers_v)
               for w, g, buffers_v in zip(weights, grads, [torch.zeros_like(w) for w in weights])]
    return F.cross_entropy(call(virtual, x_valid), y_valid)


def test_second_order_gradient_matches_exact():
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=3).double()
    model.train()
    x_train, x_valid = torch.randn(4, 1, 12, 12, dtype=torch.float64), torch.randn(4, 1, 12, 12, dtype=torch.float64)
    y_train, y_valid = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 0])
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    # A tiny finite-difference step in float64: with DARTS's 0.01 the estimate averages over the
    # jumps of a ReLU network's gradient, so it cannot match the exact value.
    architect = Architect(model, unrolled=True, complexity_weight=0.0, network_weight_decay=3e-4,
                          hessian_epsilon=1e-6)
    eta = 0.1
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    alphas = architect.trainable_alphas()
    _, _, grads = architect._unrolled_gradients(x_train, y_train, x_valid, y_valid, eta, optimizer, alphas)
    approx = torch.cat([g.flatten() for g in grads])

    # Exact gradient through the virtual step (the Hessian term by double backward).
    flat = torch.cat([a.detach().flatten() for a in model.arch_parameters()]).requires_grad_()
    loss = _virtual_validation_loss(model, flat, x_train, y_train, x_valid, y_valid, eta, 0.9, 3e-4, buffers)
    exact = torch.autograd.grad(loss, flat)[0]
    # A numerical estimate of a few components, as a check of the exact gradient itself.
    for index in (0, 17, 160):
        step = torch.zeros_like(flat)
        step[index] = 1e-5
        plus = _virtual_validation_loss(model, flat.detach() + step, x_train, y_train, x_valid, y_valid, eta, 0.9,
                                        3e-4, buffers)
        minus = _virtual_validation_loss(model, flat.detach() - step, x_train, y_train, x_valid, y_valid, eta, 0.9,
                                         3e-4, buffers)
        numeric = (plus - minus) / 2e-5
        assert torch.isclose(numeric, exact[index], rtol=1e-2, atol=1e-6)
    relative_error = (approx - exact).norm() / exact.norm()
    assert relative_error < 0.01


def test_first_order_step_moves_only_undecided_alphas():
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=3)
    decisions = [UNDECIDED] * EDGES
    decisions[0] = PRIMITIVES.index("conv_3x3")
    model.set_decisions({"normal": decisions, "reduce": [UNDECIDED] * EDGES})
    frozen = model.alphas_normal[0].detach().clone()
    free = model.alphas_normal[1].detach().clone()
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.1)
    weights_before = [p.detach().clone() for p in model.weight_parameters()]
    architect = Architect(model, lr=0.1)
    x, y = torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    architect.step(x, y, x, y, 0.1, optimizer)
    assert torch.equal(model.alphas_normal[0], frozen)
    assert not torch.equal(model.alphas_normal[1], free)
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.weight_parameters()))


def test_complexity_penalties():
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=3)
    expected = Architect(model, complexity_weight=0.5, complexity_penalty="expected")
    shares = model.operation_shares("normal")
    assert torch.allclose(shares.sum(dim=1), torch.ones(EDGES))
    assert shares[0, 0] == 0  # ``none`` owns no parameters
    value = expected.complexity_loss()
    weights = {t: model.arch_weights(t) for t in ("normal", "reduce")}
    manual = torch.stack([(weights[t] * model.operation_shares(t)).sum(1) for t in ("normal", "reduce")]).mean()
    assert torch.isclose(value, 0.5 * manual)

    original = Architect(model, complexity_weight=0.5, complexity_penalty="original")
    alpha = model.alphas_normal[0]
    assert torch.isclose(original.complexity_loss(), 0.5 * (alpha ** 2 * original.original_shares).sum())
    assert Architect(model, complexity_weight=0.0).complexity_loss() == 0
    with pytest.raises(ValueError, match="complexity_penalty"):
        Architect(model, complexity_penalty="l2")


def test_genotype_json_round_trip(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps({"genotype": genotypes.to_dict(Auto_FERNet)}))
    loaded = genotypes.load(path)
    assert loaded == genotypes.validate(Auto_FERNet)
    assert genotypes.load("Auto_FERNet") == loaded
    namespace = {"Genotype": Genotype}
    exec(genotypes.to_python(loaded, "Pasted"), namespace)  # the printed line must be valid Python
    assert genotypes.validate(namespace["Pasted"]) == loaded


def test_auto_fernet_cell_as_published():
    assert Auto_FERNet.normal[4] == ("ghost", 2)
    assert Auto_FERNet.reduce[0] == ("max_pool_3x3", 0)
    assert Auto_FERNet.normal_concat == [2, 3, 4, 5]


@pytest.mark.parametrize("mutate,message", [
    (lambda g: g["normal"].__setitem__(0, ["conv_9x9", 0]), "unknown operation 'conv_9x9'"),
    (lambda g: g["normal"].__setitem__(0, ["none", 0]), "unknown operation 'none'"),
    (lambda g: g["reduce"].__setitem__(2, ["sep_conv_3x3", 3]), "input 3 of node 1"),
    (lambda g: g["normal"].pop(), "expected 8"),
    (lambda g: g.pop("reduce_concat"), "missing reduce_concat"),
    (lambda g: g.__setitem__("normal_concat", [2, 9]), "state 9"),
])
def test_invalid_genotypes_rejected(tmp_path, mutate, message):
    data = genotypes.to_dict(Auto_FERNet)
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError, match=message):
        genotypes.load(path)


def test_unknown_genotype_name_rejected():
    with pytest.raises(GenotypeError, match="unknown genotype 'NoSuchCell'"):
        genotypes.load("NoSuchCell")


def test_random_genotypes_valid_and_varied():
    drawn = [genotypes.load(f"random:{seed}") for seed in range(200)]
    assert drawn[0] == genotypes.random_genotype(0)
    assert len({genotypes.to_python(g) for g in drawn}) == 200
    used_ops, used_sources = set(), set()
    for genotype in drawn:
        for cell in (genotype.normal, genotype.reduce):
            for node in range(genotypes.NODES):
                (op_a, source_a), (op_b, source_b) = cell[2 * node], cell[2 * node + 1]
                assert source_a != source_b, "a node must read two different states"
                used_ops.update((op_a, op_b))
                used_sources.update((source_a, source_b))
        assert genotype.normal_concat == genotype.reduce_concat == [2, 3, 4, 5]
    assert used_ops == set(PRIMITIVES) - {"none"}
    assert used_sources == set(range(genotypes.NODES + 1))


@pytest.mark.parametrize("spec", ["random:", "random:x", "random:-1"])
def test_random_spec_needs_seed(spec):
    with pytest.raises(GenotypeError, match="random:SEED"):
        genotypes.load(spec)


@pytest.mark.parametrize("kernel_size,dilation", [(3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("size", [9, 12])
def test_depthwise_fast_backward_matches_conv2d(kernel_size, dilation, size):
    from NAS.operations import DepthwiseConv

    torch.manual_seed(0)
    padding = dilation * (kernel_size - 1) // 2
    fast = DepthwiseConv(6, kernel_size, padding=padding, dilation=dilation)
    reference = torch.nn.Conv2d(6, 6, kernel_size, padding=padding, dilation=dilation, groups=6, bias=False)
    reference.weight.data.copy_(fast.weight.data)
    x = torch.randn(3, 6, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(3, 6, size, size)
    assert fast.fast_backward
    y_fast, y_reference = fast(x), reference(x)
    assert y_fast.grad_fn.name().endswith("_DepthwiseConvFunctionBackward")
    torch.testing.assert_close(y_fast, y_reference)
    fast_grads = torch.autograd.grad(y_fast, (x, fast.weight), grad)
    reference_grads = torch.autograd.grad(y_reference, (x, reference.weight), grad)
    torch.testing.assert_close(fast_grads[0], reference_grads[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_grads[1], reference_grads[1], rtol=1e-4, atol=1e-4)

    fast.weight.requires_grad_(False)
    (input_grad,) = torch.autograd.grad(fast(x), (x,), grad)
    torch.testing.assert_close(input_grad, reference_grads[0], rtol=1e-4, atol=1e-4)


def test_depthwise_strided_uses_conv2d():
    from NAS.operations import DepthwiseConv

    assert not DepthwiseConv(4, 5, stride=2, padding=2).fast_backward
    assert not DepthwiseConv(4, 3, padding=1).fast_backward
