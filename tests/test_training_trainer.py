"""Trainer, config, data mixture and checkpoints, on a tiny toy encoder (fast, CPU, deterministic)."""

from __future__ import annotations

import json
import sys
import types
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from metaembed.examples import TrainExample
from metaembed.models import BACKENDS, Item, MetaEmbedEncoder
from metaembed.training.config import ConfigError, config_from_dict, load_config
from metaembed.training.data import MixtureSampler, build_sampler
from metaembed.training.trainer import Trainer


class ToyEncoder(MetaEmbedEncoder):
    """Frozen hashed bag-of-words tower + trainable projection and Meta Tokens (mirrors a real backend)."""

    backend = "toy"

    def __init__(self, num_query_tokens: int = 4, num_candidate_tokens: int = 8, dim: int = 16, vocab: int = 97):
        super().__init__()
        self.num_query_tokens, self.num_candidate_tokens, self.dim = num_query_tokens, num_candidate_tokens, dim
        self.config = {
            "backend": self.backend,
            "num_query_tokens": num_query_tokens,
            "num_candidate_tokens": num_candidate_tokens,
            "dim": dim,
            "vocab": vocab,
        }
        self.tower = nn.EmbeddingBag(vocab, dim, mode="mean").requires_grad_(False)
        self.proj = nn.Linear(dim, dim)
        self.meta = nn.Embedding(num_query_tokens + num_candidate_tokens, dim)
        self.dropout = nn.Dropout(0.1)  # makes the trajectory depend on the RNG state
        self.prepared = 0

    @classmethod
    def from_config(cls, model_cfg: dict, device=None) -> ToyEncoder:
        return cls(**model_cfg).to(device or "cpu")

    def prepare(self, examples) -> None:
        self.prepared += len(examples)

    def embed(self, items, side):
        ids, offsets = [], []
        for item in items:
            offsets.append(len(ids))
            ids += [
                zlib.crc32(w.encode()) % self.config["vocab"]
                for w in f"{item.instruction or ''} {item.text or item.key or 'image'}".split()
            ]
        h = self.tower(torch.tensor(ids), torch.tensor(offsets))
        rows = (
            self.meta.weight[: self.num_query_tokens] if side == "query" else self.meta.weight[self.num_query_tokens :]
        )
        return F.normalize(self.dropout(self.proj(h))[:, None, :] + 0.1 * rows[None], dim=-1)

    def encode_queries(self, items, batch_size=16):
        with torch.no_grad():
            return self.embed(items, "query").float()

    def encode_candidates(self, items, batch_size=16):
        with torch.no_grad():
            return self.embed(items, "candidate").float()

    def save_pretrained(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.config))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(directory) / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path, device=None):
        cfg = json.loads((Path(path) / "config.json").read_text())
        model = cls(**{k: v for k, v in cfg.items() if k != "backend"})
        model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
        return model


def toy_source(options: dict) -> list[TrainExample]:
    n = options.get("n", 24)
    out = []
    for i in range(n):
        neg = Item(text=f"word{(i + 1) % n} page") if options.get("negatives", True) and i % 2 == 0 else None
        out.append(TrainExample(Item(text=f"word{i}"), Item(text=f"word{i} page"), neg, "toy"))
    return out


REGISTRY = {"toy": toy_source, "toy2": lambda opts: toy_source({"n": 10, "negatives": False})}


def make_cfg(tmp_path: Path, **over) -> dict:
    cfg = {
        "model": {"backend": "toy", "num_query_tokens": 4, "num_candidate_tokens": 8},
        "groups": ["1x1", "2x4", "4x8"],
        "data": [{"name": "toy", "weight": 2}, {"name": "toy2", "weight": 1, "query_instruction": "find:"}],
        "steps": 6,
        "batch_size": 6,
        "grad_accum": 2,
        "seed": 3,
        "tau": 0.1,
        "optimizer": {"lr": 0.05},
        "schedule": {"warmup_steps": 2, "decay": "cosine"},
        "output_dir": str(tmp_path / "out"),
        "log_file": str(tmp_path / "log.jsonl"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "checkpoint_every": 3,
    }
    cfg.update(over)
    return cfg


def trainer(tmp_path, **over) -> Trainer:
    return Trainer(
        config_from_dict(make_cfg(tmp_path, **over)), registry=REGISTRY, encoder_cls=ToyEncoder, device="cpu"
    )


def fixed_loss(t: Trainer) -> float:
    pool = t.sampler.pools["toy"]
    t.model.eval()
    with torch.no_grad():
        q = t.model.embed([ex.query for ex in pool], "query")
        c = t.model.embed([ex.positive for ex in pool], "candidate")
        return float(t.loss_fn(q, c).total)


def test_training_reduces_loss_and_saves_model(tmp_path):
    t = trainer(tmp_path, steps=20, checkpoint_every=0, checkpoint_dir=None, schedule={"decay": "constant"})
    before = fixed_loss(t)
    model = t.train()
    assert fixed_loss(t) < 0.7 * before
    assert model.prepared == 24 + 10  # prepare() saw every example once
    assert not any(p.grad is not None for p in t.model.tower.parameters())  # frozen tower untouched
    assert t.model.proj.weight.grad is not None and t.model.meta.weight.grad.abs().sum() > 0
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 21))
    assert {"loss", "1x1", "2x4", "4x8", "lr"} <= set(logs[0])
    reloaded = ToyEncoder.from_pretrained(tmp_path / "out").eval()
    items = [Item(text="word3"), Item(text="word5 page")]
    assert torch.equal(reloaded.encode_queries(items), t.model.eval().encode_queries(items))


class CrashAfterStep4(Trainer):
    def train_step(self):
        if self.step == 4:
            raise KeyboardInterrupt("simulated interruption")
        return super().train_step()


def test_resume_continues_the_same_trajectory(tmp_path):
    straight = trainer(tmp_path / "a")
    straight.train()

    over = make_cfg(tmp_path / "b")
    crashing = CrashAfterStep4(config_from_dict(over), registry=REGISTRY, encoder_cls=ToyEncoder, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    assert sorted(p.name for p in (tmp_path / "b" / "ckpt").iterdir()) == ["step-00000003"]
    resumed = trainer(tmp_path / "b")
    resumed.train(resume=True)
    assert resumed.step == 6
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # records of the interrupted run past the checkpoint are dropped
    for name, p in straight.params.items():
        assert torch.equal(p, resumed.params[name]), name
    # the optimizer moments continue too
    a, b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    ckpt = tmp_path / "b" / "ckpt" / "step-00000006"
    assert {p.name for p in ckpt.iterdir()} == {"trainable.safetensors", "optimizer.safetensors", "state.json"}


def test_eval_hook_called_every_n_steps_without_changing_training(tmp_path, monkeypatch):
    calls = []

    def evaluate(encoder, data_path, budgets, limit):
        calls.append((data_path, [str(b) for b in budgets], limit))
        torch.rand(100)  # eval consuming RNG must not shift the training trajectory
        return {"ndcg@5": 0.5}

    monkeypatch.setitem(sys.modules, "metaembed.eval.harness", types.SimpleNamespace(evaluate=evaluate))
    with_eval = trainer(tmp_path / "e", eval={"data": "tux", "every": 2, "budgets": "1x1,4x8", "limit": 5})
    with_eval.train()
    assert calls == [("tux", ["(1,1)", "(4,8)"], 5)] * 3
    logged = [json.loads(x) for x in (tmp_path / "e" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval" in r] == [2, 4, 6]
    plain = trainer(tmp_path / "p")
    plain.train()
    for name, p in plain.params.items():
        assert torch.equal(p, with_eval.params[name]), name


def test_single_vector_mode_builds_one_vector_model(tmp_path):
    t = trainer(tmp_path, mode="single-vector", model={"backend": "toy"}, steps=2, checkpoint_every=0)
    assert (t.model.num_query_tokens, t.model.num_candidate_tokens) == (1, 1)
    assert [str(g) for g in t.loss_fn.groups] == ["(1,1)"]
    t.train()
    t2 = trainer(tmp_path / "n", mode="no-mmr")
    assert [str(g) for g in t2.loss_fn.groups] == ["(4,8)"]


def test_mixture_sampler_is_deterministic_and_weighted():
    pools = {"a": toy_source({"n": 50}), "b": toy_source({"n": 50})}
    s1, s2 = MixtureSampler(pools, {"a": 3, "b": 1}, seed=1), MixtureSampler(pools, {"a": 3, "b": 1}, seed=1)
    batches = [s1.next_batch(8) for _ in range(50)]
    assert all(x is y for b, c in zip(batches, (s2.next_batch(8) for _ in range(50))) for x, y in zip(b, c))
    share_a = sum(ex in pools["a"] for b in batches for ex in b) / 400
    assert 0.65 < share_a < 0.85
    # a pool is drawn without replacement within an epoch
    first_epoch = [id(ex) for b in batches for ex in b if ex in pools["b"]][:50]
    assert len(set(first_epoch)) == len(first_epoch)
    s3 = MixtureSampler(pools, {"a": 3, "b": 1}, seed=1)
    s3.load_state_dict(json.loads(json.dumps(MixtureSampler(pools, {"a": 3, "b": 1}, seed=1).state_dict())))
    assert s3.next_batch(8)[0] is batches[0][0]


def test_sampler_options_and_unknown_source():
    sampler = build_sampler(
        [{"name": "toy", "query_instruction": "Q:", "candidate_instruction": "C:", "hard_negatives": False, "n": 4}],
        seed=0,
        registry=REGISTRY,
    )
    ex = sampler.pools["toy"][0]
    assert (ex.query.instruction, ex.positive.instruction, ex.negative) == ("Q:", "C:", None)
    assert len(sampler.pools["toy"]) == 4
    with pytest.raises(ValueError, match="unknown data source 'nope'; known: toy, toy2"):
        build_sampler([{"name": "nope"}], seed=0, registry=REGISTRY)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "key 'steps' must be > 0"),
        ({"batch_size": "8"}, "key 'batch_size' must be int"),
        ({"mode": "fancy"}, "key 'mode' must be one of"),
        ({"optimizer": {"lr": -1}}, "key 'optimizer.lr' must be > 0"),
        ({"optimizer": {"learning_rate": 1}}, "key 'optimizer.learning_rate' is not a known setting"),
        ({"groups": ["16x64"]}, "key 'groups' need 16x64 vectors but the model has 4x8"),
        ({"data": [{"weight": 1}]}, "key 'data[0].name' is required"),
        ({"eval": {"data": "x"}}, "key 'eval.every' is required"),
        ({"stpes": 3}, "key 'stpes' is not a known setting"),
    ],
)
def test_config_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(make_cfg(tmp_path, **change), where="x.yaml")


def test_cli_trains_from_yaml(tmp_path, monkeypatch, capsys):
    import yaml

    from metaembed.train import main

    monkeypatch.setitem(BACKENDS, "toy", f"{__name__}:ToyEncoder")
    monkeypatch.setattr("metaembed.train.SOURCES", REGISTRY)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(make_cfg(tmp_path)))
    assert load_config(path).steps == 6
    assert main(["--config", str(path), "--steps", "2", "--output", str(tmp_path / "o2"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o2")
    assert (tmp_path / "o2" / "config.json").is_file()
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "missing.yaml")])
    assert "missing.yaml not found" in capsys.readouterr().err


def test_checkpoints_are_atomic_and_checked(tmp_path):
    t = trainer(tmp_path, steps=2, checkpoint_every=1, learnable_tau=True)
    t.train()
    assert "loss.log_tau" in t.params  # a learnable temperature is optimised and checkpointed too
    ckpt = tmp_path / "ckpt"
    (ckpt / ".step-00000009-crashed").mkdir()  # an interrupted write never counts as a checkpoint
    (ckpt / "step-00000007").mkdir()  # nor does a directory without state.json
    resumed = trainer(tmp_path, steps=3, checkpoint_every=1, learnable_tau=True)
    assert resumed.resume() and resumed.step == 2
    assert torch.equal(resumed.params["loss.log_tau"], t.params["loss.log_tau"])
    with pytest.raises(ValueError, match="seed 3, config says 4"):
        trainer(tmp_path, steps=3, seed=4, learnable_tau=True).resume()
    with pytest.raises(RuntimeError, match="does not match the model"):
        trainer(tmp_path, steps=3).resume()  # no learnable tau: the checkpoint has an extra tensor
    (ckpt / "step-00000002" / "optimizer.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RuntimeError, match="step-00000002 is unreadable or incomplete"):
        trainer(tmp_path, steps=3, learnable_tau=True).resume()


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml")), ids=lambda p: p.name
)
def test_shipped_training_configs_validate(path):
    """Every training recipe in configs/ parses and names only registered data sources."""
    from metaembed.datasets.training import SOURCES

    cfg = load_config(path)
    assert {entry["name"] for entry in cfg.data} <= set(SOURCES)


def test_config_base_is_read_first_and_own_keys_replace_it(tmp_path):
    import yaml

    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(make_cfg(tmp_path)))
    (tmp_path / "sub" / "child.yaml").write_text(yaml.safe_dump({"base": "../base.yaml", "mode": "no-mmr", "steps": 9}))
    base, child = load_config(tmp_path / "base.yaml"), load_config(tmp_path / "sub" / "child.yaml")
    assert (child.mode, child.steps, base.mode, base.steps) == ("no-mmr", 9, "mmr", 6)
    assert child.data == base.data and child.optimizer == base.optimizer
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\nsteps: 1\n")
    with pytest.raises(ConfigError, match="'base' chain loops back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match="gone.yaml not found"):
        load_config(tmp_path / "orphan.yaml")


def test_mini_ablations_differ_from_the_shipped_recipe_only_in_mode_and_paths():
    import dataclasses

    configs = Path(__file__).resolve().parents[1] / "configs"
    shipped = load_config(configs / "mini.yaml")
    own = {"mode", "output_dir", "log_file", "checkpoint_dir"}
    for name, mode in (("mini-no-mmr", "no-mmr"), ("mini-single-vector", "single-vector")):
        ablation = load_config(configs / f"{name}.yaml")
        assert ablation.mode == mode and ablation.output_dir != shipped.output_dir
        if mode == "single-vector":  # the mode itself sets R_q = R_c = 1; every other model option is shared
            one = {"num_query_tokens": 1, "num_candidate_tokens": 1}
            assert ablation.model.kwargs == {**shipped.model.kwargs, **one}
        keys = own | {"model"} if mode == "single-vector" else own
        assert dataclasses.replace(ablation, **{k: getattr(shipped, k) for k in keys}) == shipped
