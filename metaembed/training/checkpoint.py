"""Pickle-free training checkpoints: tensors in safetensors, scalars and RNG bookkeeping in JSON.

``torch.save`` would pickle the optimizer; a checkpoint a user hands us must never execute code on
load, so optimizer moments go to safetensors (keyed by parameter NAME, robust to reordering) and the
rest (step, sampler counts, scheduler, param groups) to JSON. Each checkpoint is written into a temp
directory and renamed into place, so an interrupted write never looks like a complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from metaembed.io import atomic_directory

logger = logging.getLogger(__name__)

WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    directory: str | Path,
    step: int,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any],
) -> Path:
    """Write ``directory/step-NNNNNNNN`` atomically; ``params`` maps names to the optimised parameters."""
    final = Path(directory) / f"step-{step:08d}"
    with atomic_directory(final) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(tmp / WEIGHTS))
        index = {id(p): name for name, p in params.items()}
        opt_tensors = _rng_tensors()
        opt_state = optimizer.state_dict()
        id_by_index = {}
        for group, saved in zip(optimizer.param_groups, opt_state["param_groups"], strict=True):
            id_by_index.update({i: index[id(p)] for i, p in zip(saved["params"], group["params"], strict=True)})
        for i, state in opt_state["state"].items():
            for key, value in state.items():
                tensor = value if torch.is_tensor(value) else torch.tensor(value)
                opt_tensors[f"optim.{id_by_index[i]}.{key}"] = tensor.detach().cpu().contiguous()
        save_file(opt_tensors, str(tmp / OPTIMIZER))
        groups = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
            | {"params": [id_by_index[i] for i in g["params"]]}
            for g in opt_state["param_groups"]
        ]
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        state = {"format": 1, "step": step, "param_groups": groups, "scheduler": sched, **extra}
        (tmp / STATE).write_text(json.dumps(state, indent=1))
    logger.info("checkpoint written: %s", final)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (temp dirs of interrupted writes are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE).is_file()
    ]
    return max(found)[1] if found else None


def load_checkpoint(
    path: str | Path,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG in place; return the JSON state (step, sampler...)."""
    path = Path(path)
    try:
        state = json.loads((path / STATE).read_text())
        weights = load_file(str(path / WEIGHTS))
        opt_tensors = load_file(str(path / OPTIMIZER))
    except Exception as err:  # OSError, JSON errors and safetensors' own error types alike
        raise RuntimeError(f"checkpoint {path} is unreadable or incomplete: {err}") from err
    if set(weights) != set(params):
        missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        raise RuntimeError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            if weights[name].shape != p.shape:
                raise RuntimeError(
                    f"checkpoint {path}: {name} has shape {tuple(weights[name].shape)}, model {tuple(p.shape)}"
                )
            p.copy_(weights[name].to(p.device, p.dtype))
    name_of = {id(p): name for name, p in params.items()}
    flat = [p for group in optimizer.param_groups for p in group["params"]]
    index_of = {name_of[id(p)]: i for i, p in enumerate(flat)}
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in opt_tensors.items():
        if key.startswith("optim."):
            name, field = key[len("optim.") :].rsplit(".", 1)
            per_param.setdefault(index_of[name], {})[field] = tensor
    groups = [g | {"params": [index_of[n] for n in g["params"]]} for g in state["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    scheduler.load_state_dict(state["scheduler"] | {"lr_lambdas": [None] * len(optimizer.param_groups)})
    _restore_rng(opt_tensors)
    return state
