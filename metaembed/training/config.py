"""Training configuration as data: YAML -> validated dataclasses, with errors that name the key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metaembed.budget import TRAINED_GROUPS, Budget, BudgetError
from metaembed.training.loss import MODES


class ConfigError(ValueError):
    """A training config that is missing a key or has a bad value; the message names file and key."""


@dataclass
class ModelConfig:
    """``backend`` picks the encoder class; ``kwargs`` go to its ``from_config`` (README, "Training")."""

    backend: str
    kwargs: dict[str, Any]


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # YAML null turns clipping off


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0
    decay: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.0


@dataclass
class EvalConfig:
    data: str
    every: int
    budgets: list[Budget]
    limit: int | None = None


@dataclass
class TrainConfig:
    model: ModelConfig
    data: list[dict[str, Any]]
    steps: int
    batch_size: int
    output_dir: str
    grad_accum: int = 1
    seed: int = 0
    tau: float = 0.03
    learnable_tau: bool = False
    normalize_scores: bool = False
    mode: str = "mmr"
    groups: list[Budget] = field(default_factory=lambda: list(TRAINED_GROUPS))
    group_weights: list[float] | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    log_file: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    eval: EvalConfig | None = None


class _Reader:
    """Typed access to one mapping; every error says where (file + dotted key)."""

    def __init__(self, data: Any, where: str, prefix: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {type(data).__name__}"
            )
        self.data, self.where, self.prefix, self.used = data, where, prefix, set()

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.where}: key '{self.prefix}{key}' {msg}")

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., check=None, msg: str = "", null: Any = ...
    ) -> Any:
        """``null``: the value an explicit YAML null means (default: same as absent)."""
        self.used.add(key)
        if null is not ... and key in self.data and self.data[key] is None:
            return null
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.err(key, "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.err(key, f"must be {names}, got {value!r}")
        if check is not None and not check(value):
            raise self.err(key, f"{msg}, got {value!r}")
        return value

    def sub(self, key: str, required: bool = False) -> _Reader | None:
        self.used.add(key)
        if self.data.get(key) is None:
            if required:
                raise self.err(key, "is required")
            return None
        return _Reader(self.data[key], self.where, f"{self.prefix}{key}.")

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.err(unknown[0], "is not a known setting")


def _budgets(reader: _Reader, key: str, default: list[Budget]) -> list[Budget]:
    raw = reader.get(key, (list, str), default=None)
    if raw is None:
        return list(default)
    items = raw.replace(",", " ").split() if isinstance(raw, str) else raw
    try:
        return [Budget.parse(x) if isinstance(x, str) else Budget(*x) for x in items]
    except (BudgetError, TypeError) as err:
        raise reader.err(key, f"must list budgets like '8x16' or [8, 16]: {err}") from err


def _positive(x: float) -> bool:
    return x > 0


def config_from_dict(raw: Any, where: str = "<config>") -> TrainConfig:
    """Validate a parsed YAML document; raises :class:`ConfigError` naming the offending key."""
    top = _Reader(raw, where)
    model_r = top.sub("model", required=True)
    backend = model_r.get("backend", str)
    kwargs = {k: v for k, v in model_r.data.items() if k != "backend"}
    mode = top.get("mode", str, "mmr", lambda m: m in MODES, f"must be one of {', '.join(MODES)}")
    if mode == "single-vector":
        for key in ("num_query_tokens", "num_candidate_tokens"):
            if kwargs.get(key, 1) != 1:
                raise model_r.err(key, f"must be 1 (or absent) in mode single-vector, got {kwargs[key]!r}")
            kwargs[key] = 1
    kwargs.setdefault("num_query_tokens", 16)
    kwargs.setdefault("num_candidate_tokens", 64)

    data = top.get("data", list, check=lambda d: len(d) > 0, msg="must list at least one source")
    for i, entry in enumerate(data):
        entry_r = _Reader(entry, where, f"data[{i}].")
        entry_r.get("name", str)
        entry_r.get("weight", float, 1.0, _positive, "must be > 0")

    opt_r = top.sub("optimizer")
    optimizer = OptimizerConfig()
    if opt_r is not None:
        optimizer = OptimizerConfig(
            lr=opt_r.get("lr", float, 1e-4, _positive, "must be > 0"),
            weight_decay=opt_r.get("weight_decay", float, 0.0, lambda x: x >= 0, "must be >= 0"),
            betas=tuple(
                opt_r.get(
                    "betas",
                    list,
                    [0.9, 0.999],
                    lambda b: len(b) == 2 and all(0 <= x < 1 for x in b),
                    "must be two numbers in [0, 1)",
                )
            ),
            eps=opt_r.get("eps", float, 1e-8, _positive, "must be > 0"),
            max_grad_norm=opt_r.get("max_grad_norm", float, 1.0, _positive, "must be > 0", null=None),
        )
        opt_r.finish()
    sched_r = top.sub("schedule")
    schedule = ScheduleConfig()
    if sched_r is not None:
        schedule = ScheduleConfig(
            warmup_steps=sched_r.get("warmup_steps", int, 0, lambda x: x >= 0, "must be >= 0"),
            decay=sched_r.get(
                "decay",
                str,
                "cosine",
                lambda x: x in ("cosine", "linear", "constant"),
                "must be cosine, linear or constant",
            ),
            min_lr_ratio=sched_r.get("min_lr_ratio", float, 0.0, lambda x: 0 <= x <= 1, "must be in [0, 1]"),
        )
        sched_r.finish()
    eval_r = top.sub("eval")
    eval_cfg = None
    if eval_r is not None:
        eval_cfg = EvalConfig(
            data=eval_r.get("data", str),
            every=eval_r.get("every", int, check=_positive, msg="must be > 0"),
            budgets=_budgets(eval_r, "budgets", list(TRAINED_GROUPS)),
            limit=eval_r.get("limit", int, None, _positive, "must be > 0"),
        )
        eval_r.finish()

    cfg = TrainConfig(
        model=ModelConfig(backend=backend, kwargs=kwargs),
        data=[dict(e) for e in data],
        steps=top.get("steps", int, check=_positive, msg="must be > 0"),
        batch_size=top.get("batch_size", int, check=lambda x: x >= 2, msg="must be >= 2 (InfoNCE needs negatives)"),
        output_dir=top.get("output_dir", str),
        grad_accum=top.get("grad_accum", int, 1, _positive, "must be > 0"),
        seed=top.get("seed", int, 0),
        tau=top.get("tau", float, 0.03, _positive, "must be > 0"),
        learnable_tau=top.get("learnable_tau", bool, False),
        normalize_scores=top.get("normalize_scores", bool, False),
        mode=mode,
        groups=_budgets(top, "groups", list(TRAINED_GROUPS)),
        group_weights=top.get("group_weights", list, None),
        optimizer=optimizer,
        schedule=schedule,
        log_file=top.get("log_file", str, None),
        checkpoint_dir=top.get("checkpoint_dir", str, None),
        checkpoint_every=top.get("checkpoint_every", int, 0, lambda x: x >= 0, "must be >= 0"),
        eval=eval_cfg,
    )
    top.finish()
    if cfg.checkpoint_every and not cfg.checkpoint_dir:
        raise top.err("checkpoint_dir", "is required when checkpoint_every > 0")
    max_rq = max(g.r_q for g in cfg.groups)
    max_rc = max(g.r_c for g in cfg.groups)
    if mode != "single-vector" and (max_rq > kwargs["num_query_tokens"] or max_rc > kwargs["num_candidate_tokens"]):
        raise top.err(
            "groups",
            f"need {max_rq}x{max_rc} vectors but the model has "
            f"{kwargs['num_query_tokens']}x{kwargs['num_candidate_tokens']}",
        )
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config.

    A config may name ``base: other.yaml`` (relative to its own folder): the base is read first and the
    config's own top-level keys replace the base's. Ablations thus state only what differs, and stay
    identical to their base by construction.
    """
    return config_from_dict(_read_yaml(Path(path), seen=()), where=str(path))


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict) or "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: key 'base' must be a path to another config")
    parent = _read_yaml(path.parent / base, (*seen, path.resolve()))
    if not isinstance(parent, dict):
        raise ConfigError(f"{path}: base {base} is not a mapping")
    return {**parent, **raw}
