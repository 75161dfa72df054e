"""MetaEmbed on Qwen2.5-VL, the paper's layout (Xiao et al., 2025, Sec. 2; README, "Encoders").

``[left padding | input tokens (image + text) | 16 query Meta Tokens | 64 candidate Meta Tokens]``:
the Meta Tokens are one ``nn.Embedding(R_q + R_c, hidden)`` appended to every input, the attention
mask is extended with ones and the M-RoPE position ids are recomputed over the extended sequence with
the model's own ``get_rope_index``. Queries read the last hidden states at [-80:-64], candidates at
[-64:], each vector L2-normalised. The LLM gets LoRA (peft, r=32, alpha=32) on q/k/v/o/gate/up/down;
the vision tower stays frozen. Only LoRA and Meta Tokens are saved; the config names the base weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from metaembed.models.base import CONFIG_NAME, Item, MetaEmbedEncoder, ModelLoadError, pick_device, read_config

logger = logging.getLogger(__name__)

META_FILE = "meta_tokens.safetensors"
ADAPTER_DIR = "adapter"
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
# LoRA on the language model's projections only: the vision tower's MLP reuses the names gate/up/down_proj.
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

#: ``from_config`` keys and their defaults (the paper's recipe); ``base_model`` is required.
DEFAULTS: dict[str, Any] = {
    "num_query_tokens": 16,
    "num_candidate_tokens": 64,
    "lora_r": 32,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "max_pixels": 1024 * 28 * 28,  # ~1,024 visual tokens after 2x2 merging
    "min_pixels": 4 * 28 * 28,
    "query_prefix": "Query: ",
    "candidate_prefix": "",
    "image_only_text": "Describe the image.",
    "gradient_checkpointing": False,
    "name": "MetaEmbed-Qwen2.5-VL",
}


def _missing_base_message(base: str, err: Exception) -> str:
    hub_id = base.startswith("Qwen/")
    repo = base if hub_id else "Qwen/Qwen2.5-VL-3B-Instruct"
    folder = "DIR" if hub_id else base
    return (
        f"Qwen2.5-VL base weights {base!r} are not available locally ({type(err).__name__}: {err}). "
        "This project runs offline: on a machine with internet run "
        f"`huggingface-cli download {repo} --local-dir {folder}` (7B: Qwen/Qwen2.5-VL-7B-Instruct), copy the "
        f"folder here and set the model's `base_model` to it{'' if hub_id else f' ({base})'}."
    )


def _load_base(base: str, device: torch.device):
    """Frozen backbone (no LM head), tokenizer and image processor from a local folder or HF cache."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLModel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        model = Qwen2_5_VLModel.from_pretrained(base, dtype=dtype, local_files_only=True, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        # The image processor alone, not AutoProcessor: Qwen's processor also builds a video processor
        # that needs torchvision, which this project does not install.
        image_processor = AutoImageProcessor.from_pretrained(base, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(_missing_base_message(base, err)) from err
    return model.to(device), tokenizer, image_processor


class QwenMetaEmbed(MetaEmbedEncoder):
    """Thin encoder: Qwen2.5-VL + LoRA + Meta Tokens; loss and trainer live in metaembed.training."""

    backend = "qwen2_5_vl"

    def __init__(self, backbone: nn.Module, tokenizer: Any, image_processor: Any, config: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone  # peft.PeftModel around Qwen2_5_VLModel
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.num_query_tokens = int(config["num_query_tokens"])
        self.num_candidate_tokens = int(config["num_candidate_tokens"])
        text_cfg = self.qwen.config.text_config
        self.dim = int(text_cfg.hidden_size)
        self.meta_tokens = nn.Embedding(self.num_query_tokens + self.num_candidate_tokens, self.dim)
        # Start at the scale of real token embeddings so the Meta Tokens look like ordinary inputs.
        std = float(self.qwen.get_input_embeddings().weight.float().std())
        nn.init.normal_(self.meta_tokens.weight, std=std)
        self.meta_tokens.to(self.qwen.get_input_embeddings().weight.device)
        self.image_token_id = int(self.qwen.config.image_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    @property
    def qwen(self) -> nn.Module:
        """The Qwen2_5_VLModel inside the peft wrapper (LoRA layers injected in place)."""
        return self.backbone.get_base_model()

    @property
    def device(self) -> torch.device:
        return self.meta_tokens.weight.device

    @property
    def precision(self) -> str:
        """bfloat16 weights and autocast on CUDA, float32 on CPU (see ``_load_base`` and ``_encode``)."""
        return "bfloat16" if self.device.type == "cuda" else "float32"

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Meta Tokens + LoRA, also when loaded frozen for inference (so the fingerprint is stable)."""
        return {k: v for k, v in self.named_parameters() if k == "meta_tokens.weight" or ".lora_" in k}

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def _config(cls, model_cfg: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(model_cfg) - set(DEFAULTS) - {"base_model", "backend"})
        if unknown:
            known = ", ".join(["base_model", *DEFAULTS])
            raise ValueError(f"unknown qwen2_5_vl model setting {unknown[0]!r}; known: {known}")
        if not model_cfg.get("base_model"):
            raise ValueError("qwen2_5_vl model setting 'base_model' is required (local folder or HF id in the cache)")
        return {"backend": cls.backend, **DEFAULTS, **{k: v for k, v in model_cfg.items() if k != "backend"}}

    @classmethod
    def from_config(cls, model_cfg: dict[str, Any], device: str | torch.device | None = None) -> QwenMetaEmbed:
        """Fresh trainable model: base weights frozen, new LoRA adapter, new Meta Tokens (seeded by caller)."""
        from peft import LoraConfig, get_peft_model

        config = cls._config(model_cfg)
        device = pick_device(device)
        base, tokenizer, image_processor = _load_base(config["base_model"], device)
        base.requires_grad_(False)
        if config["gradient_checkpointing"]:
            base.activation_checkpointing_enable()  # trades compute for activation memory at 3B+ scale
        lora = LoraConfig(
            r=config["lora_r"],
            lora_alpha=config["lora_alpha"],
            lora_dropout=config["lora_dropout"],
            target_modules=LORA_TARGETS,
        )
        model = cls(get_peft_model(base, lora), tokenizer, image_processor, config)
        return model.to(device)

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` + ``meta_tokens.safetensors`` + ``adapter/`` (peft, safetensors); base not copied."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=directory))
        try:
            save_file({"weight": self.meta_tokens.weight.detach().float().cpu().contiguous()}, str(tmp / META_FILE))
            self.backbone.save_pretrained(str(tmp / ADAPTER_DIR), safe_serialization=True)
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config, indent=1))
            if (directory / ADAPTER_DIR).exists():
                shutil.rmtree(directory / ADAPTER_DIR)
            os.replace(tmp / ADAPTER_DIR, directory / ADAPTER_DIR)
            os.replace(tmp / META_FILE, directory / META_FILE)
            os.replace(tmp / CONFIG_NAME, directory / CONFIG_NAME)  # last: its presence marks a complete save
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> QwenMetaEmbed:
        """Load a directory written by :meth:`save_pretrained` (base weights from ``config['base_model']``)."""
        from peft import PeftModel

        path = Path(path)
        config = read_config(path)
        if config.get("backend") != cls.backend:
            found = config.get("backend")
            raise ModelLoadError(f"{path / CONFIG_NAME} has backend {found!r}, expected {cls.backend!r}")
        for needed in (META_FILE, f"{ADAPTER_DIR}/adapter_model.safetensors", f"{ADAPTER_DIR}/adapter_config.json"):
            if not (path / needed).is_file():
                raise ModelLoadError(f"{path / needed} is missing: incomplete MetaEmbed checkpoint")
        config = cls._config(config)
        device = pick_device(device)
        base, tokenizer, image_processor = _load_base(config["base_model"], device)
        backbone = PeftModel.from_pretrained(base, str(path / ADAPTER_DIR), is_trainable=False)
        model = cls(backbone, tokenizer, image_processor, config)
        meta = load_file(str(path / META_FILE)).get("weight")
        if meta is None or tuple(meta.shape) != tuple(model.meta_tokens.weight.shape):
            shape, expected = None if meta is None else tuple(meta.shape), tuple(model.meta_tokens.weight.shape)
            raise ModelLoadError(f"{path / META_FILE}: Meta Tokens have shape {shape}, config expects {expected}")
        with torch.no_grad():
            model.meta_tokens.weight.copy_(meta)
        return model.to(device).eval()

    # -- forward ---------------------------------------------------------------------------------
    def _prompt(self, item: Item, side: str) -> str:
        prefix = self.config["query_prefix"] if side == "query" else self.config["candidate_prefix"]
        text = item.text if item.text and item.text.strip() else self.config["image_only_text"]
        instruction = f"{item.instruction}\n" if item.instruction else ""
        vision = VISION if item.image is not None else ""
        return f"<|im_start|>user\n{vision}{instruction}{prefix}{text}<|im_end|><|endoftext|>"

    def _inputs(self, items: Sequence[Item], side: str) -> dict[str, torch.Tensor]:
        prompts = [self._prompt(item, side) for item in items]
        images = [item.image.convert("RGB") for item in items if item.image is not None]
        vision: dict[str, torch.Tensor] = {}
        if images:
            vision = dict(
                self.image_processor(
                    images=images,
                    return_tensors="pt",
                    size={"shortest_edge": self.config["min_pixels"], "longest_edge": self.config["max_pixels"]},
                )
            )
            merge = self.qwen.config.vision_config.spatial_merge_size**2
            counts = iter((vision["image_grid_thw"].prod(-1) // merge).tolist())
            # One <|image_pad|> per merged visual token (what Qwen's processor does).
            prompts = [p.replace(IMAGE_PAD, IMAGE_PAD * next(counts), 1) if IMAGE_PAD in p else p for p in prompts]
        tok = self.tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
        return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"], **vision}

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        """Differentiable forward: (n, R_q, D) for ``side="query"``, (n, R_c, D) for "candidate"."""
        if side not in ("query", "candidate"):
            raise ValueError(f"side must be 'query' or 'candidate', got {side!r}")
        inputs = {k: v.to(self.device) for k, v in self._inputs(items, side).items()}
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        qwen = self.qwen
        n_meta = self.num_query_tokens + self.num_candidate_tokens
        # Meta Tokens are text-type positions (type 0) for M-RoPE; their ids are placeholders only.
        ext_ids = torch.cat([ids, ids.new_full((ids.shape[0], n_meta), self.pad_token_id)], dim=1)
        ext_mask = torch.cat([mask, mask.new_ones((mask.shape[0], n_meta))], dim=1)
        token_types = (ext_ids == self.image_token_id).int()
        position_ids, _ = qwen.get_rope_index(
            ext_ids, token_types, image_grid_thw=inputs.get("image_grid_thw"), attention_mask=ext_mask
        )
        embeds = qwen.get_input_embeddings()(ids)
        if "pixel_values" in inputs:
            features = qwen.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
            features = torch.cat(features.pooler_output, dim=0).to(embeds.dtype)
            image_mask = (ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(image_mask, features)
        meta = self.meta_tokens.weight.to(embeds.dtype).unsqueeze(0).expand(ids.shape[0], -1, -1)
        hidden = qwen.language_model(
            inputs_embeds=torch.cat([embeds, meta], dim=1),
            attention_mask=ext_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        # [..., query Meta (R_q) | candidate Meta (R_c)]: the side picks its block at the end of the sequence.
        r_c = self.num_candidate_tokens
        vectors = hidden[:, -n_meta:-r_c] if side == "query" else hidden[:, -r_c:]
        return F.normalize(vectors.float(), dim=-1)

    @torch.no_grad()
    def _encode(self, items: Sequence[Item], side: str, batch_size: int) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
            chunks = []
            for start in range(0, len(items), batch_size):
                with autocast:
                    chunks.append(self.embed(items[start : start + batch_size], side).float().cpu())
        finally:
            self.train(was_training)
        width = self.num_query_tokens if side == "query" else self.num_candidate_tokens
        return torch.cat(chunks) if chunks else torch.empty(0, width, self.dim)

    def encode_queries(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self._encode(items, "query", batch_size)

    def encode_candidates(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self._encode(items, "candidate", batch_size)
