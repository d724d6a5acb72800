"""Chat messages for language and vision-language engines, in the OpenAI chat-completions shape.

llama.cpp, transformers chat templates, vLLM and OpenAI-compatible servers all take a list of
``{"role": ..., "content": ...}`` messages; a user turn that shows an image uses content parts
(``{"type": "image_url", ...}`` then ``{"type": "text", ...}``).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

Message = dict[str, Any]


def text_messages(prompt: str, system_prompt: str | None = None) -> list[Message]:
    """A single-turn text conversation: an optional system turn, then the user's prompt."""
    return [*_system(system_prompt), {"role": "user", "content": prompt}]


def image_messages(image_url: str, question: str, system_prompt: str | None = None) -> list[Message]:
    """A single-turn visual question: the image (a URL, e.g. ``png_data_url(image)``) then the text."""
    content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": question}]
    return [*_system(system_prompt), {"role": "user", "content": content}]


def png_data_url(image: np.ndarray) -> str:
    """An ``H x W x 3`` uint8 RGB array as a ``data:image/png;base64,...`` URL."""
    from PIL import Image

    check_rgb(image)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def check_rgb(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a non-empty ``H x W x 3`` uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        described = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {described}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")


def _system(system_prompt: str | None) -> list[Message]:
    return [{"role": "system", "content": system_prompt}] if system_prompt else []
