"""Low-rank projections (``ProjCompConfig.projection_rank``): every P is the fixed one-hot S plus a trainable
U·Vᵀ. Step 0 still equals hard pruning, the amortised step pushes the right gradients into U and V, merging
stays exact and adapters save and load U and V, never a dense P."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, Trainer

from hf_projcomp import ProjCompConfig, ProjCompTrainer, get_projcomp_model, hard_prune
from hf_projcomp.architectures import ARCHITECTURES
from hf_projcomp.projection import Projection, unwrap
from tests.test_training import max_diff, tiny_data, training_args
from tests.tiny import TINY, fresh_env, target_sizes, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

RANK = 4
FACTORS = ("p_in_u", "p_in_v", "p_out_u", "p_out_v")


def low_rank(model_type: str, rank: int | None = RANK, model=None, **config):
    config = {**target_sizes(model_type), "importance": "magnitude", "projection_rank": rank, **config}
    return get_projcomp_model(model or tiny_model(model_type), ProjCompConfig(**config), progress=False)


def perturb(pc, seed: int = 2, scale: float = 0.02) -> None:
    """Stands in for training: every trainable tensor (U, V, A, norms) moves."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unwrap(pc).trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def test_step_zero_equals_hard_pruning(model_type, input_ids):
    model = tiny_model(model_type)
    pc = low_rank(model_type, model=model)
    projections = list(unwrap(pc).projections.values())
    assert all(m.p_in is None and m.p_out is None for m in projections), "a dense P was built"
    factors = [(name, p) for m in projections for name, p in m.named_parameters() if name in FACTORS]
    assert factors and all(p.shape[-1] == RANK for _, p in factors)
    assert all(not p.any() for name, p in factors if name.endswith("_u")), "U must start at zero"
    assert all(p.any() for name, p in factors if name.endswith("_v"))
    sel = unwrap(pc).selection()
    diff = (logits(pc, input_ids) - logits(hard_prune(model, sel.hidden, sel.ffn), input_ids)).abs().max().item()
    assert diff <= 1e-5, f"{model_type}: max abs diff {diff}"


def test_merge_equals_projected_after_perturbing(model_type, input_ids):
    model = tiny_model(model_type)
    pc = low_rank(model_type, model=model)
    perturb(pc)
    sel = unwrap(pc).selection()
    projected = logits(pc, input_ids)
    assert (logits(hard_prune(model, sel.hidden, sel.ffn), input_ids) - projected).abs().max() > 1e-3
    merged = pc.merge_and_unload()
    assert type(merged) is type(model)
    assert relative(logits(merged, input_ids), projected) <= 1e-4


def test_amortized_step_gradients_equal_autograd(model_type, input_ids):
    """∂L/∂W_c accumulated over two micro-batches, then pushed into U, V and A once, equals autograd through
    ``S + U·Vᵀ`` and the product on every micro-batch (float64, so only the math can differ)."""
    naive, amortized = low_rank(model_type), low_rank(model_type)
    for pc in (naive, amortized):
        if ARCHITECTURES[model_type].ffn_groups(pc.config):  # the grouped-matmul experts kernel has no float64
            unwrap(pc).compressed.set_experts_implementation("eager")
        pc.to(torch.float64)
        perturb(pc)  # U ≠ 0, or V's gradient (∂L/∂P)ᵀ·U would be zero and prove nothing
        pc.train()
    unwrap(amortized).set_amortized(True)
    for ids in input_ids.split(1):
        naive(input_ids=ids, labels=ids).loss.backward()
        amortized(input_ids=ids, labels=ids).loss.backward()
    unwrap(amortized).push_gradients()
    want = dict(unwrap(naive).adapter_parameters())
    got = dict(unwrap(amortized).adapter_parameters())
    # A projected bias of a zero-initialised base bias (StarCoder2's o_proj) gives its P a zero gradient.
    factors = [p for name, p in want.items() if name.endswith(FACTORS) and "-bias." not in name]
    assert factors and all(p.grad is not None and p.grad.any() for p in factors)
    for name, param in want.items():
        assert relative(got[name].grad, param.grad) <= 1e-6, name


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_path_gradients_equal_autograd(input_ids, reentrant):
    """With gradient checkpointing every backward sends its ∂L/∂W_c on into U, V and A (outside autograd)."""
    naive, checkpointed = (low_rank("llama").to(torch.float64) for _ in range(2))
    unwrap(checkpointed).compressed.activation_checkpointing_enable({"use_reentrant": reentrant})
    for pc in (naive, checkpointed):
        perturb(pc)
        pc.train()
        for ids in input_ids.split(1):
            pc(input_ids=ids, labels=ids).loss.backward()
    got = dict(unwrap(checkpointed).adapter_parameters())
    for name, param in unwrap(naive).adapter_parameters():
        assert relative(got[name].grad, param.grad) <= 1e-6, name


class _Experts(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)


def test_projection_vjp_equals_autograd_through_the_whole_expression():
    """One expert weight with two fused output chunks: a shared P_in (d_model), a P_out per expert (d_ff).
    forward_with_vjp's W_c and gradients equal plain autograd through ``(S + U·Vᵀ)`` written out by hand."""
    gen = torch.Generator().manual_seed(0)
    experts, chunks, out_b, in_b, k_out, k_in = 2, 2, 12, 20, 8, 14
    weight = torch.randn(experts, chunks * out_b, in_b, generator=gen, dtype=torch.float64)
    in_index = torch.randperm(in_b, generator=gen)[:k_in].sort().values
    out_index = torch.stack([torch.randperm(out_b, generator=gen)[:k_out].sort().values for _ in range(experts)])
    proj = Projection(_Experts(weight), in_index, out_index, out_chunks=chunks, rank=3).to(torch.float64)
    with torch.no_grad():
        for p in proj.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    got, vjp = proj.forward_with_vjp()
    grad = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    grads = vjp(grad)

    leaves = {n: p.detach().clone().requires_grad_() for n, p in proj.named_parameters()}
    s_in = torch.eye(in_b, dtype=torch.float64)[:, in_index]  # x @ S_in == x[..., in_index]
    s_out = torch.eye(out_b, dtype=torch.float64)[out_index].unsqueeze(1)  # (experts, 1, k_out, out_b)
    p_in = s_in + leaves["p_in_u"] @ leaves["p_in_v"].mT
    p_out = s_out + leaves["p_out_u"] @ leaves["p_out_v"].mT
    want = (p_out @ weight.reshape(experts, chunks, out_b, in_b) @ p_in).reshape(experts, -1, k_in) + leaves["a"]
    assert leaves.keys() == grads.keys() == {"a", *FACTORS}
    assert relative(got, want.detach()) <= 1e-12
    for name, expected in zip(leaves, torch.autograd.grad(want, list(leaves.values()), grad), strict=True):
        assert relative(grads[name], expected) <= 1e-6, name


def test_adapter_saves_factors_not_dense_p_and_reloads_exactly(model_type, input_ids, tmp_path):
    pc = low_rank(model_type)
    perturb(pc)
    pc.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["projection_rank"] == RANK
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    projections = [k for k in shapes if k.startswith("base_model.projections.")]
    assert not [k for k in projections if k.endswith((".p_in", ".p_out"))], "a dense P was saved"
    assert all(shapes[k][-1] == RANK for k in projections if k.endswith(FACTORS))
    assert any(k.endswith(".in_index") for k in projections)  # S travels as indices

    reloaded = PeftModel.from_pretrained(tiny_model(model_type), tmp_path, is_trainable=True)
    assert unwrap(reloaded).projcomp_config.projection_rank == RANK
    original, restored = unwrap(pc).adapter_state_dict(), unwrap(reloaded).adapter_state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    assert torch.equal(logits(reloaded, input_ids), logits(pc, input_ids))
    assert reloaded.get_nb_trainable_parameters()[0] == pc.get_nb_trainable_parameters()[0]
    low = PeftModel.from_pretrained(tiny_model(model_type), tmp_path, low_cpu_mem_usage=True)
    assert not any(t.is_meta for t in (*low.parameters(), *low.buffers()))
    assert torch.equal(logits(low, input_ids), logits(pc, input_ids))


def test_adapter_reloads_in_a_fresh_process(input_ids, tmp_path):
    tiny_model("qwen3").save_pretrained(tmp_path / "base")
    pc = low_rank("qwen3", model=AutoModelForCausalLM.from_pretrained(tmp_path / "base"))
    perturb(pc)
    pc.save_pretrained(tmp_path / "adapter")
    torch.save(input_ids, tmp_path / "ids.pt")
    script = f"""
import torch
import hf_projcomp
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained({str(tmp_path / "adapter")!r}).eval()
assert hf_projcomp.projection.unwrap(model).projcomp_config.projection_rank == {RANK}
with torch.no_grad():
    torch.save(model(input_ids=torch.load({str(tmp_path / "ids.pt")!r})).logits, {str(tmp_path / "logits.pt")!r})
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=fresh_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "logits.pt"), logits(pc, input_ids))


def test_fsdp2_sharded_steps_equal_one_process(tmp_path):
    """tests/scripts/fsdp_step.py with a rank: U and V shard like any parameter, and two sharded processes end
    where one process ends (as the dense test in test_fsdp.py, same tolerance)."""
    wrapper = tmp_path / "fsdp_rank.py"
    wrapper.write_text(
        f"""import functools, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from hf_projcomp import ProjCompConfig
from tests.scripts import fsdp_step
fsdp_step.ProjCompConfig = functools.partial(ProjCompConfig, projection_rank={RANK})
fsdp_step.main(Path(sys.argv[1]))
"""
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    for cmd in (
        [sys.executable, str(wrapper), str(tmp_path / "one")],
        [*torchrun, str(wrapper), str(tmp_path / "two")],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (load_file(tmp_path / name / "adapter.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys() and any(k.endswith(FACTORS) for k in one)
    initial = low_rank("llama").state_dict()
    moved = [(one[k] - initial[k]).abs().max().item() for k in one if k.endswith("_u")]
    assert min(moved) > 1e-3
    assert max((one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point()) <= 1e-4
    expected = load_file(tmp_path / "two" / "logits.safetensors")
    merged = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "two" / "adapter").merge_and_unload()
    torch.testing.assert_close(logits(merged, expected["input_ids"]), expected["logits"], rtol=0, atol=1e-5)


def test_an_adapter_saved_without_the_field_loads_dense(input_ids, tmp_path):
    """A dense adapter's config is written as before (no ``projection_rank``) and loads dense."""
    pc = low_rank("llama", rank=None)
    perturb(pc)
    pc.save_pretrained(tmp_path)
    assert "projection_rank" not in json.loads((tmp_path / "adapter_config.json").read_text())
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert unwrap(reloaded).projcomp_config.projection_rank is None
    projections = list(unwrap(reloaded).projections.values())
    assert all(m.p_in_u is None and m.p_out_u is None and m.in_index is None for m in projections)
    assert all(m.p_in is not None or m.p_out is not None for m in projections)
    assert torch.equal(logits(reloaded, input_ids), logits(pc, input_ids))


def test_config_field_serialises():
    config = ProjCompConfig(hidden_size=48, projection_rank=8)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["projection_rank"] == 8
    assert ProjCompConfig.from_dict(data).projection_rank == 8
    assert ProjCompConfig.from_dict({k: v for k, v in data.items() if k != "projection_rank"}).projection_rank is None


@pytest.mark.parametrize("rank", [0, -3, 2.5, True, "4"])
def test_bad_rank_is_refused_naming_the_parameter(rank):
    with pytest.raises((TypeError, ValueError), match=r"projection_rank must be a positive int or None"):
        ProjCompConfig(hidden_size=48, projection_rank=rank)


def test_trainable_parameters_follow_the_formula():
    """Tiny Llama, d_model 64 → 48, d_ff 96 → 64, 2 layers, vocabulary 96: r·(rows + cols) per P, plus every
    A and norm; q/k/v keep their 64/32/32 outputs, o and down project d_model out, gate/up/down d_ff."""
    d, d_t, f, f_t, v, layers, q, kv = 64, 48, 96, 64, TINY["vocab_size"], 2, 64, 32

    def count(r: int) -> int:
        p_per_layer = 4 * (d + d_t) + 2 * ((d + d_t) + (f + f_t)) + (f + f_t) + (d + d_t)  # q k v o, gate up, down
        a_per_layer = (q + 2 * kv) * d_t + d_t * q + 2 * f_t * d_t + d_t * f_t
        norms = layers * 2 * d_t + d_t
        return r * (layers * p_per_layer + 2 * (d + d_t)) + layers * a_per_layer + 2 * v * d_t + norms

    for r in (1, RANK):
        assert low_rank("llama", rank=r).get_nb_trainable_parameters()[0] == count(r)
    dense = low_rank("llama", rank=None).get_nb_trainable_parameters()[0]
    assert count(RANK) < dense


def test_a_rank_above_the_sides_of_p_is_clipped(input_ids):
    model = tiny_model("llama")
    pc = low_rank("llama", rank=1000, model=model)
    for m in unwrap(pc).projections.values():
        for side in ("in", "out"):
            u, v = getattr(m, f"p_{side}_u"), getattr(m, f"p_{side}_v")
            if u is not None:
                assert u.shape[-1] == v.shape[-1] == min(u.shape[-2], v.shape[-2])
    sel = unwrap(pc).selection()
    assert torch.allclose(logits(pc, input_ids), logits(hard_prune(model, sel.hidden, sel.ffn), input_ids), atol=1e-5)


def test_projection_learning_rate_applies_to_u_and_v(tmp_path):
    pc = low_rank("llama")
    trainer = ProjCompTrainer(
        model=pc, args=training_args(tmp_path), train_dataset=tiny_data(), projection_learning_rate=5e-3
    )
    corrections, projections, _ = trainer.create_optimizer().param_groups
    names = {id(p): n.rsplit(".", 1)[-1] for n, p in unwrap(pc).projections.named_parameters()}
    assert projections["lr"] == 5e-3 and {names[id(p)] for p in projections["params"]} == set(FACTORS)
    assert {names[id(p)] for p in corrections["params"]} == {"a"}
    assert len(projections["params"]) + len(corrections["params"]) == len(names)
    assert pc.card_settings()["projection_rank"] == RANK


def test_trainer_amortized_step_equals_plain_trainer(tmp_path):
    """Four optimizer steps of ProjCompTrainer (accumulation 2, clipping active) end where a plain Trainer's
    autograd through every micro-batch ends, with U and V moved."""
    initial = low_rank("llama").state_dict()
    naive, amortized = low_rank("llama"), low_rank("llama")
    Trainer(model=naive, args=training_args(tmp_path / "a"), train_dataset=tiny_data()).train()
    ProjCompTrainer(
        model=amortized, args=training_args(tmp_path / "b"), train_dataset=tiny_data(), projection_learning_rate=1e-3
    ).train()
    moved = {k: (naive.state_dict()[k] - v).abs().max().item() for k, v in initial.items() if k.endswith(FACTORS)}
    assert moved and min(moved.values()) > 0
    assert max_diff(naive.state_dict(), amortized.state_dict()) <= 1e-5
