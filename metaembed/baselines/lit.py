"""LiT-style single-vector baseline: frozen EfficientNet-Lite0 + frozen MiniLM, two linear heads, InfoNCE.

"Locked-image Tuning" keeps both pretrained towers frozen and learns only how to map them into a
shared space, so training on cached features takes seconds on CPU. It is the floor MetaEmbed-Mini
must beat. Training data = the TRAINING splits only: Tux Paint train, Open Clip Art, Fashion-MNIST
train (a deterministic per-class subset).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from metaembed.io import atomic_write, atomic_write_json
from metaembed.models import Item, ModelLoadError

from .single_vector import SingleVectorEncoder
from .towers import IMAGE_DIM, TEXT_DIM, efficientnet, minilm

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "baselines" / "lit.yaml"
HEADS_FILE = "lit_heads.safetensors"


@dataclass(frozen=True)
class LitConfig:
    """Training settings (values live in configs/baselines/lit.yaml)."""

    dim: int = 256
    epochs: int = 40
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.01
    init_temperature: float = 0.07
    seed: int = 0
    fmnist_per_class: int = 100
    fmnist_template: str = "{}"
    tux_limit: int | None = None
    openclipart_limit: int | None = None
    image_batch_size: int = 32

    @classmethod
    def load(cls, path: str | Path | None = None) -> LitConfig:
        path = Path(path) if path else DEFAULT_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path}: LiT config not found")
        raw = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{path}: unknown LiT settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**raw)


@dataclass(frozen=True)
class Pair:
    """One training pair: ``key`` identifies the image for the feature cache; ``load`` decodes it."""

    key: str
    text: str
    load: Callable[[], Image.Image]


def training_pairs(config: LitConfig) -> list[Pair]:
    """Tux Paint train + Open Clip Art + Fashion-MNIST train subset, in a fixed order."""
    from metaembed.datasets import fmnist, openclipart, tuxpaint

    pairs = [Pair(s.key, s.caption, lambda s=s: tuxpaint.load_image(s, max_side=448))
             for s in tuxpaint.load_split("train")[:config.tux_limit] if s.caption]
    n_tux = len(pairs)
    pairs += [Pair(c.key, c.text, lambda c=c: openclipart.load_image(c, max_side=448))
              for c in openclipart.list_clips(limit=config.openclipart_limit) if c.text]
    n_oca = len(pairs) - n_tux
    images, labels = fmnist.load_split("train")
    taken = dict.fromkeys(range(len(fmnist.CLASSES)), 0)
    for i, label in enumerate(labels.tolist()):
        if taken[label] < config.fmnist_per_class:
            taken[label] += 1
            pairs.append(Pair(f"fmnist:train:{i}", config.fmnist_template.format(fmnist.CLASSES[label]),
                              lambda i=i: fmnist.to_image(images[i]).convert("RGB")))
    logger.info("LiT training pairs: %d Tux Paint, %d Open Clip Art, %d Fashion-MNIST", n_tux, n_oca,
                len(pairs) - n_tux - n_oca)
    return pairs


def cached_image_features(pairs: Sequence[Pair], cache_dir: Path, batch_size: int = 32) -> torch.Tensor:
    """EfficientNet features of every pair's image, read from / written to ``cache_dir`` by key."""
    path = cache_dir / "effnet_lite0_features.safetensors"
    cached: dict[str, torch.Tensor] = load_file(path) if path.is_file() else {}
    missing = [p for p in pairs if p.key not in cached]
    if missing:
        net = efficientnet()
        for lo in tqdm(range(0, len(missing), batch_size), desc="EfficientNet features", unit="batch"):
            batch = missing[lo:lo + batch_size]
            feats = net.embed([p.load() for p in batch])
            cached.update({p.key: f.clone() for p, f in zip(batch, feats, strict=True)})
            if (lo // batch_size) % 20 == 19:  # checkpoint: a killed run resumes where it stopped
                _save_atomic(cached, path)
        _save_atomic(cached, path)
    return torch.stack([cached[p.key] for p in pairs])


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


class LitHeads(torch.nn.Module):
    """Standardise frozen features, then one linear map per tower into a shared ``dim``-space."""

    def __init__(self, dim: int, init_temperature: float = 0.07) -> None:
        super().__init__()
        self.register_buffer("image_mean", torch.zeros(IMAGE_DIM))
        self.register_buffer("image_std", torch.ones(IMAGE_DIM))
        self.image = torch.nn.Linear(IMAGE_DIM, dim)
        self.text = torch.nn.Linear(TEXT_DIM, dim)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    def embed_images(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.image((feats - self.image_mean) / self.image_std), dim=-1)

    def embed_texts(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.text(feats), dim=-1)


def info_nce(image: torch.Tensor, text: torch.Tensor, text_ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch's DISTINCT captions (Fashion-MNIST repeats 10 class names).

    Plain InfoNCE would make an image compete with copies of its own caption (a loss floor of log 2
    per copy); here each caption is one column, and a caption's positives are all its images.
    """
    first: dict[int, int] = {}
    for position, tid in enumerate(text_ids.tolist()):
        first.setdefault(tid, position)
    columns = torch.tensor(list(first.values()))
    column_of = {tid: c for c, tid in enumerate(first)}
    logits = scale * image @ text[columns].T  # (n images, u captions)
    i2t = torch.nn.functional.cross_entropy(logits, torch.tensor([column_of[t] for t in text_ids.tolist()]))
    positives = (text_ids[columns][:, None] == text_ids[None, :]).float()  # (u, n)
    t2i = torch.nn.functional.cross_entropy(logits.T, positives / positives.sum(1, keepdim=True))
    return (i2t + t2i) / 2


def train_heads(image_feats: torch.Tensor, text_feats: torch.Tensor, texts: Sequence[str],
                config: LitConfig) -> LitHeads:
    """Train the two heads on cached features (minutes at most on 2 CPU cores)."""
    torch.manual_seed(config.seed)
    heads = LitHeads(config.dim, config.init_temperature)
    heads.image_mean.copy_(image_feats.mean(0))
    heads.image_std.copy_(image_feats.std(0).clamp(min=1e-6))
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    text_ids = torch.tensor([ids[t] for t in texts])
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = len(texts)
    steps = config.epochs * math.ceil(n / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        order, total = torch.randperm(n, generator=generator), 0.0
        for lo in range(0, n, config.batch_size):
            batch = order[lo:lo + config.batch_size]
            loss = info_nce(heads.embed_images(image_feats[batch]), heads.embed_texts(text_feats[batch]),
                            text_ids[batch], heads.logit_scale.exp().clamp(max=100))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
        logger.debug("LiT epoch %d: loss %.4f", epoch + 1, total / n)
    logger.info("LiT trained %d epochs on %d pairs: final loss %.4f", config.epochs, n, total / n)
    return heads.eval()


class LitEncoder(SingleVectorEncoder):
    """Images -> EfficientNet -> image head; text-only items -> MiniLM -> text head.

    An item with an image is embedded from the image alone (an MMEB instruction is ignored: the
    baseline has no way to condition on it).
    """

    backend = "lit-baseline"

    def __init__(self, heads: LitHeads, config: LitConfig) -> None:
        super().__init__()
        self.heads, self.lit_config = heads, config
        self.dim = config.dim
        self.config = {"name": "LiT EfficientNet-Lite0 + MiniLM (single vector)", "backend": self.backend,
                       "lit": asdict(config)}

    def vectors(self, items: Sequence[Item], side: str) -> torch.Tensor:
        out = torch.empty(len(items), self.dim)
        with_image = [i for i, item in enumerate(items) if item.image is not None]
        text_only = [i for i, item in enumerate(items) if item.image is None]
        if with_image:
            feats = efficientnet().embed([items[i].image for i in with_image])
            out[with_image] = self.heads.embed_images(feats)
        if text_only:
            out[text_only] = self.heads.embed_texts(minilm().embed([items[i].text for i in text_only]))
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _save_atomic(dict(self.heads.state_dict()), directory / HEADS_FILE)
        atomic_write_json(directory / "config.json", self.config)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> LitEncoder:
        path = Path(path)
        if not (path / HEADS_FILE).is_file() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a LiT baseline checkpoint (needs config.json and {HEADS_FILE})")
        config = LitConfig(**json.loads((path / "config.json").read_text())["lit"])
        heads = LitHeads(config.dim, config.init_temperature)
        heads.load_state_dict(load_file(str(path / HEADS_FILE)))
        return cls(heads.eval(), config)


def train_lit(cache_dir: str | Path, config: LitConfig | None = None) -> LitEncoder:
    """Build training pairs, cache frozen features under ``cache_dir``, train the heads."""
    config = config or LitConfig.load()
    cache_dir = Path(cache_dir)
    pairs = training_pairs(config)
    image_feats = cached_image_features(pairs, cache_dir, config.image_batch_size)
    texts = [p.text for p in pairs]
    unique = list(dict.fromkeys(texts))
    text_table = minilm().embed(unique, progress=True)
    row = {t: i for i, t in enumerate(unique)}
    text_feats = text_table[[row[t] for t in texts]]
    return LitEncoder(train_heads(image_feats, text_feats, texts, config), config)


def load_or_train_lit(cache_dir: str | Path, config_path: str | Path | None = None,
                      retrain: bool = False) -> LitEncoder:
    """Reuse trained heads from ``cache_dir/lit-<hash of config>`` when present, else train and save them."""
    config = LitConfig.load(config_path)
    model_dir = Path(cache_dir) / f"lit-{_config_digest(config)}"
    if not retrain and (model_dir / HEADS_FILE).is_file():
        logger.info("using trained LiT heads from %s", model_dir)
        return LitEncoder.from_pretrained(model_dir)
    encoder = train_lit(cache_dir, config)
    encoder.save_pretrained(model_dir)
    logger.info("saved LiT heads to %s", model_dir)
    return encoder


def _config_digest(config: LitConfig) -> str:
    """Heads trained with different settings live in different folders."""
    return hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:10]
