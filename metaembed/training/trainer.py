"""The MMR training loop: sample a mixed batch, embed both sides, MMR loss, AdamW on trainable parts.

Conventions shared with encoder backends (``from_config``, ``embed``, optional ``prepare``) are in
the README section "Training".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from metaembed.examples import Source, TrainExample
from metaembed.io import atomic_write
from metaembed.models import MetaEmbedEncoder, backend_class, pick_device
from metaembed.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from metaembed.training.config import ScheduleConfig, TrainConfig
from metaembed.training.data import MixtureSampler, build_sampler
from metaembed.training.loss import MMRLoss

logger = logging.getLogger(__name__)


def lr_lambda(schedule: ScheduleConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warmup, then cosine / linear decay to ``min_lr_ratio`` (or constant)."""

    def factor(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / schedule.warmup_steps
        if schedule.decay == "constant":
            return 1.0
        span = max(1, total_steps - schedule.warmup_steps)
        progress = min(1.0, (step - schedule.warmup_steps) / span)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule.decay == "cosine" else 1 - progress
        return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * shape

    return factor


def build_model(cfg: TrainConfig, device: torch.device, encoder_cls: type[MetaEmbedEncoder] | None = None):
    """Seeded ``from_config(model_cfg, device)`` of the configured backend (README, "Training")."""
    cls = encoder_cls or backend_class(cfg.model.backend)
    if not hasattr(cls, "from_config"):
        raise TypeError(f"backend {cfg.model.backend!r} ({cls.__name__}) has no from_config(model_cfg, device)")
    torch.manual_seed(cfg.seed)
    return cls.from_config(dict(cfg.model.kwargs), device=device)


class Trainer:
    """Owns model, loss, optimiser, scheduler, sampler, logs and checkpoints for one config.

    ``registry`` maps the data-source names a config may use to their functions (the CLI passes
    :data:`metaembed.datasets.training.SOURCES`; tests pass their own): training never imports datasets.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        registry: Mapping[str, Source],
        encoder_cls: type[MetaEmbedEncoder] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = pick_device(device)
        self.model = build_model(cfg, self.device, encoder_cls)
        self.loss_fn = MMRLoss(cfg.groups, cfg.tau, cfg.group_weights, cfg.mode, cfg.learnable_tau,
                               cfg.normalize_scores).to(self.device)
        self.params: dict[str, torch.nn.Parameter] = {
            n: p for n, p in self.model.named_parameters() if p.requires_grad
        } | {f"loss.{n}": p for n, p in self.loss_fn.named_parameters()}
        if not self.params:
            raise ValueError(f"backend {cfg.model.backend!r} has no trainable parameters")
        opt = cfg.optimizer
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.schedule, cfg.steps))
        self.sampler: MixtureSampler = build_sampler(cfg.data, cfg.seed, registry)
        self.step = 0

    # -- one optimisation step -------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _micro_step(self, batch: list[TrainExample], scale: float) -> dict[str, float]:
        negatives = [ex.negative for ex in batch if ex.negative is not None]
        with self._autocast():
            q = self.model.embed([ex.query for ex in batch], "query")
            c = self.model.embed([ex.positive for ex in batch] + negatives, "candidate")
            out = self.loss_fn(q, c[: len(batch)], c[len(batch) :] if negatives else None)
        (out.total * scale).backward()
        return {"loss": float(out.total.detach())} | out.per_group

    def train_step(self) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches of ``batch_size`` (each its own InfoNCE)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for _ in range(self.cfg.grad_accum):
            stats = self._micro_step(self.sampler.next_batch(self.cfg.batch_size), 1.0 / self.cfg.grad_accum)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v / self.cfg.grad_accum
        if self.cfg.optimizer.max_grad_norm is not None:
            sums["grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.optimizer.max_grad_norm)
            )
        sums["lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return sums

    # -- state -----------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        return save_checkpoint(
            self.cfg.checkpoint_dir,
            self.step,
            self.params,
            self.optimizer,
            self.scheduler,
            {"sampler": self.sampler.state_dict(), "seed": self.cfg.seed},
        )

    def resume(self) -> bool:
        """Restore the newest checkpoint in ``checkpoint_dir``; False when there is none."""
        path = latest_checkpoint(self.cfg.checkpoint_dir) if self.cfg.checkpoint_dir else None
        if path is None:
            return False
        state = load_checkpoint(path, self.params, self.optimizer, self.scheduler)
        if state.get("seed") != self.cfg.seed:
            raise ValueError(
                f"checkpoint {path} was trained with seed {state.get('seed')}, config says {self.cfg.seed}"
            )
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self._truncate_log()
        logger.info("resumed from %s (step %d)", path, self.step)
        return True

    def _truncate_log(self) -> None:
        """Drop log records of steps after the checkpoint (the interrupted run will redo them)."""
        if not self.cfg.log_file or not Path(self.cfg.log_file).is_file():
            return
        path = Path(self.cfg.log_file)
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= self.step]
        atomic_write(path, "".join(line + "\n" for line in kept).encode())

    def _log(self, record: dict[str, Any]) -> None:
        if self.cfg.log_file:
            path = Path(self.cfg.log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(json.dumps(record, default=str) + "\n")

    def run_eval(self) -> dict[str, Any]:
        """Call the eval harness; its RNG use is isolated so eval never changes the training trajectory."""
        from metaembed.eval.harness import evaluate  # imported on first eval: it pulls in the index and kernels

        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                report = evaluate(
                    self.model, self.cfg.eval.data, budgets=self.cfg.eval.budgets, limit=self.cfg.eval.limit
                )
            return report.to_dict() if hasattr(report, "to_dict") else dict(report)
        finally:
            self.model.train()

    # -- the loop --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Let the backend cache what training will reuse (frozen features) before the first step; ``train``
        calls it, and so does a benchmark that times steps without that one-off cost."""
        prepare = getattr(self.model, "prepare", None)
        if prepare is None:
            return
        examples = [ex for pool in self.sampler.pools.values() for ex in pool]
        self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            prepare(examples)
        self.model.train()

    def train(self, resume: bool = False) -> MetaEmbedEncoder:
        """Run to ``cfg.steps``, logging, checkpointing and evaluating; save the final model; return it."""
        if resume and not self.resume():
            logger.info("no checkpoint in %s: starting from step 0", self.cfg.checkpoint_dir)
        self.prepare()
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
        try:
            while self.step < cfg.steps:
                start = time.perf_counter()
                stats = self.train_step()
                seconds = time.perf_counter() - start
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items() if k not in ("lr", "grad_norm")})
                self._log(
                    {
                        "step": self.step,
                        **stats,
                        "seconds": round(seconds, 4),
                        "examples_per_s": round(cfg.batch_size * cfg.grad_accum / max(seconds, 1e-9), 2),
                    }
                )
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if cfg.eval is not None and self.step % cfg.eval.every == 0:
                    self._log({"step": self.step, "eval": self.run_eval()})
        finally:
            bar.close()
        self.model.save_pretrained(cfg.output_dir)
        logger.info("model saved to %s", cfg.output_dir)
        return self.model
