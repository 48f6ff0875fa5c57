"""Projected compression under PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``).

One FSDP unit per decoder layer holds that layer's frozen base modules and the P/A of their tensors
(plus one unit each for the embedding and the LM head): base weights, P, A and AdamW's state are sharded over
the ranks. The amortised step keeps its meaning:

1. the step's first forward runs the units once; each gathers its shards, computes its ``W_c`` and
   frees the gathered copies again (the compressed model itself is small and held whole on every rank);
2. micro-batches run the compressed model only, accumulating ∂L/∂W_c locally;
3. :meth:`ProjCompModel.push_gradients` sends ∂L/∂W_c back through every unit (which gathers its
   shards once more), and FSDP reduce-scatters the mean gradient over ranks into the P/A shards; the
   compressed model's norms, replicated, are all-reduced to their mean.

The result equals the one-process step on the same global batch (DDP's semantics). Checkpoints are
adapter-only and rank-independent: :func:`save_sharded` gathers full tensors and rank 0 writes the
usual adapter folder, which :func:`peft.PeftModel.from_pretrained` loads on any number of ranks (then
:func:`shard` again).

A custom loop::

    model = get_projcomp_model(base, config)        # every rank, after init_process_group
    shard(model)                                    # FSDP2; the amortised step is switched on
    optimizer = torch.optim.AdamW(unwrap(model).trainable_parameters(), lr=1e-4)
    for batches in steps:
        for batch in batches:                       # gradient accumulation
            (model(**batch).loss / len(batches)).backward()
        unwrap(model).push_gradients()
        clip_grad_norm_(model, 1.0)
        optimizer.step(); optimizer.zero_grad()
    save_sharded(model, "adapter")
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import PeftModel


class _Unit(nn.Module):
    """One FSDP unit: frozen base modules and the projections of their planned tensors."""

    def __init__(self, base_modules: Iterable[nn.Module], projections: dict[str, nn.Module]) -> None:
        super().__init__()
        self.base = nn.ModuleList(base_modules)  # registered here so fully_shard shards their weights
        self.names = list(projections)
        self.projections = nn.ModuleList(projections.values())

    def forward(self) -> dict[str, torch.Tensor]:
        return {name: proj() for name, proj in zip(self.names, self.projections, strict=True)}


class ShardedProjections(nn.Module):
    """The FSDP root: calling it runs every unit once and returns every ``W_c`` by target name."""

    def __init__(self, units: list[_Unit]) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)

    def forward(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for unit in self.units:
            out.update(unit())
        return out


def shard(model: nn.Module, mesh: Any = None) -> nn.Module:
    """Shard a projected-compression model with FSDP2 over ``mesh`` (default: every rank of the default
    process group), one unit per decoder layer; switches the amortised step on. Returns ``model``.

    Call it on every rank after ``torch.distributed.init_process_group`` and after the model is built
    (or loaded) identically on each rank. Distillation from the frozen base is not available while the
    base is sharded.
    """
    from torch.distributed.fsdp import fully_shard

    from ..projection.model import unwrap

    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "shard() needs torch.distributed initialised: run under torchrun and call "
            "torch.distributed.init_process_group first"
        )
    pc = unwrap(model)
    if pc.sharded_projections is not None:
        raise ValueError("this model is already sharded")
    # One unit per decoder layer; the embedding and the LM head (the largest tensors) one each.
    groups: dict[int | str, dict[str, nn.Module]] = {}
    owners: dict[int | str, dict[int, nn.Module]] = {}
    for entry, proj in zip(pc.plan.weights, pc.projections.values(), strict=True):
        path = entry.name.rsplit(".", 1)[0]
        key = path if entry.layer is None else entry.layer
        groups.setdefault(key, {})[entry.name] = proj
        module = pc.model.get_submodule(path)
        owners.setdefault(key, {})[id(module)] = module
    units = [_Unit(owners[layer].values(), groups[layer]) for layer in groups]
    for unit in units:
        fully_shard(unit, mesh=mesh, shard_placement_fn=_largest_dim)
    root = ShardedProjections(units)
    fully_shard(root, mesh=mesh)
    _move_replicated(pc, next(root.parameters()).device)
    pc.__dict__["_sharded"] = root  # not a submodule (see ProjCompModel.sharded_projections)
    pc.set_amortized(True)
    return model


def _move_replicated(module: nn.Module, device: torch.device) -> None:
    """Put what stays whole on every rank (the compressed model, its norms, the selections) on the mesh's
    device, where ``fully_shard`` put the shards; the base may have been loaded on the CPU."""
    for sub in module.modules():
        for param in sub.parameters(recurse=False):
            if not hasattr(param, "to_local") and param.device != device:
                param.data = param.data.to(device)
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer is not None and buffer.device != device:
                sub._buffers[name] = buffer.to(device)


def _largest_dim(param: nn.Parameter) -> Any:
    """Shard along the largest dimension: FSDP's default, dim 0, is 1 for most P_out (one output chunk),
    which would leave all of them on the first rank."""
    from torch.distributed.tensor import Shard

    return Shard(max(range(param.dim()), key=lambda d: param.shape[d])) if param.dim() else None


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


@torch.no_grad()
def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm over P, A (sharded) and the norms (replicated); returns the norm
    before clipping, the same number on every rank."""
    from ..projection.model import unwrap

    params = [p for p in unwrap(model).trainable_parameters() if p.grad is not None]
    grads: list[Any] = [p.grad for p in params]  # DTensor (sharded P, A) or Tensor (replicated norms)
    sharded = [g.to_local() for g in grads if hasattr(g, "to_local")]
    local = [g for g in grads if not hasattr(g, "to_local")]
    squares = (
        torch.stack([g.double().pow(2).sum() for g in sharded]).sum()
        if sharded
        else torch.zeros((), dtype=torch.float64)
    )
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(squares)  # each rank holds its own shards
    squares = squares + sum((g.double().pow(2).sum() for g in local), torch.zeros((), dtype=torch.float64))
    total = squares.sqrt()
    scale = max_norm / (total.item() + 1e-6)
    if scale < 1.0:
        for grad in sharded + local:
            grad.mul_(scale)
    return total.float()


def full_adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor in full (sharded ones gathered: call it on every rank), by the names
    ``PeftModel.state_dict`` gives them."""
    prefix, pc = _adapter_prefix(model)
    return {prefix + name: _full(t).detach().cpu() for name, t in pc.adapter_state_dict().items()}


def load_full_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full adapter tensors (as :func:`full_adapter_state_dict` names them, e.g. read from a saved
    adapter folder) into a sharded model, each rank keeping its own shards; call it on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    expected = set(full_adapter_state_dict_names(model))
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"adapter state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    # A shallow copy: the loader replaces the dict's entries with the distributed tensors.
    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=False))


def full_adapter_state_dict_names(model: nn.Module) -> list[str]:
    """The names :func:`full_adapter_state_dict` gives, without gathering anything."""
    prefix, pc = _adapter_prefix(model)
    return [prefix + name for name in pc.adapter_state_dict()]


def _adapter_prefix(model: nn.Module) -> tuple[str, Any]:
    """The projected-compression model inside ``model`` and the prefix ``model.state_dict()`` gives its
    names (PEFT's ``base_model.`` when wrapped)."""
    from ..projection.model import unwrap

    pc = unwrap(model)
    return ("base_model." if pc is not model else ""), pc


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with every sharded tensor gathered, laid out as an unsharded
    ``optimizer.state_dict()`` (parameters by position), so it resumes on any number of ranks, sharded
    or not. Call it on every rank: rank 0 gets the state (on CPU), the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name: dict[str, Any] = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not by_name:
        return {}
    position = {name: i for i, name in enumerate(_names_in_order(model, optimizer))}
    return {
        "state": {position[name]: state for name, state in by_name["state"].items()},
        "param_groups": [
            {**group, "params": [position[n] for n in group["params"]]} for group in by_name["param_groups"]
        ],
    }


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a :func:`full_optimizer_state_dict` (or an unsharded run's ``optimizer.state_dict()``) into the
    optimizer of a sharded model, each rank keeping its shards; call it on every rank, each with the
    whole state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _names_in_order(model, optimizer)
    saved = [i for group in state["param_groups"] for i in group["params"]]
    if len(saved) != len(names):
        raise ValueError(f"optimizer state holds {len(saved)} parameters, the optimizer {len(names)}")
    by_name: dict[str, Any] = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, optim_state_dict=by_name, options=StateDictOptions(full_state_dict=True))


def _names_in_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def save_sharded(model: PeftModel, save_directory: str, **kwargs: Any) -> None:
    """Save a sharded model's adapter as one ordinary, rank-independent adapter folder: tensors are
    gathered on every rank (call it on all of them) and rank 0 writes."""
    state = full_adapter_state_dict(model)
    if torch.distributed.get_rank() == 0:
        model.save_pretrained(save_directory, state_dict=state, **kwargs)
    torch.distributed.barrier()


__all__ = [
    "ShardedProjections",
    "clip_grad_norm_",
    "full_adapter_state_dict",
    "full_adapter_state_dict_names",
    "full_optimizer_state_dict",
    "load_full_adapter_state_dict",
    "load_full_optimizer_state_dict",
    "save_sharded",
    "shard",
]
