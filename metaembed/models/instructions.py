"""The task instructions MetaEmbed encoders are trained with (MMEB style), per task and side.

They belong to the model: whatever encodes an item for a task (the training sources, the eval-set
builders, the gallery builder, the explorer's default query instruction) must phrase it exactly as
training did, so all of them import these strings from here. Query
instructions follow MMEB (MSCOCO_t2i / MSCOCO_i2t / ImageNet-1K) and MMEB-V2's visual-document tasks;
``None`` means the side is encoded without an instruction (MMEB's plain text targets).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """The instruction put before the query, and the one put before each candidate."""

    query: str | None
    candidate: str | None


TEXT_TO_IMAGE = Task("Find me an everyday image that matches the given caption.", "Represent the given image.")
IMAGE_TO_TEXT = Task("Find an image caption describing the given everyday image.", None)
CLASSIFICATION = Task("Represent the given image for classification.", None)
TEXT_TO_PAGE = Task("Find the document page that contains the given sentence.", "Represent the given document page.")

#: MMEB writes the image placeholder into ``qry_text``; the eval harness strips it.
IMAGE_TOKEN = "<|image_1|>"


def mmeb_query_text(instruction: str) -> str:
    """``qry_text`` of an MMEB row whose query is an image: the placeholder, a newline, the instruction."""
    return f"{IMAGE_TOKEN}\n{instruction}"
