"""A frame in a request body, as the services take one: the image's own bytes as the body (its
other fields in the query), or a JSON body with the image as base64 in its ``image`` field."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from fmprog.images import ImageError, base64_bytes

Fields = TypeVar("Fields", bound=BaseModel)
BINARY = {"type": "string", "format": "binary"}


@dataclasses.dataclass(frozen=True)
class FrameBody(Generic[Fields]):
    """A frame's body, read: the image's bytes (empty when a raw body is), and the JSON body it came
    in, validated; ``fields`` is None for a raw body, whose other fields are in the query."""

    image: bytes
    fields: Fields | None = None


def content_type(request: Request) -> str:
    """The request's media type, in lower case and without parameters; "" when it names none."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_frame_body(
    request: Request, model: type[Fields], *, raw_types: Collection[str], invalid: Callable[[str], Exception]
) -> FrameBody[Fields]:
    """The frame a request's body brings. A body of one of ``raw_types`` is the image itself, taken
    as it is (empty too: the route decides). Any other body is JSON ``model``, the image as base64
    in its ``image`` field (a ``data:`` URL too): a body that is not is a RequestValidationError
    (422, naming the field), an image that is not base64 is ``invalid("image: ...")``."""
    if content_type(request) in raw_types:
        return FrameBody(await request.body())
    try:
        fields = model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    try:
        image = base64_bytes(fields.image)  # type: ignore[attr-defined]
    except ImageError as exc:
        raise invalid(f"image: {exc}") from None
    return FrameBody(image, fields)


def query_field(
    request: Request,
    name: str,
    *,
    invalid: Callable[[str], Exception],
    required: bool = False,
    max_length: int | None = None,
) -> str | None:
    """Query parameter ``name`` of a request with a raw frame body; None when absent. ``invalid``
    when it is ``required`` and absent or empty, or longer than ``max_length`` characters."""
    value = request.query_params.get(name)
    if required and not value:
        raise invalid(f"query parameter {name} is required with a raw image body")
    if value is not None and max_length is not None and len(value) > max_length:
        raise invalid(f"query parameter {name}: at most {max_length} characters")
    return value


def frame_request_body(
    model: type[BaseModel], raw_types: Collection[str], more: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route that reads its frame with ``read_frame_body``: JSON
    ``model``, or the raw bytes as each of ``raw_types``; ``more`` content types besides (a form)."""
    content = {"application/json": {"schema": model.model_json_schema()}}
    content.update({kind: {"schema": BINARY} for kind in raw_types})
    return {"content": {**content, **(more or {})}, "required": True}
