"""POST /answer: a frame (or a form's batch of frames) answered by its program, once admission lets
it run."""

from __future__ import annotations

import functools

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fmprog.web import content_type, error_responses, frame_request_body, query_field, read_frame_body
from router.admission import Admission
from router.errors import FrameRejected, QuotaExceeded, RouterError, Unavailable, UnsupportedMedia
from router.routes.common import CurrentCaller, Service, status_of
from router.schemas import AnswerItem, Camera, FrameBatch, FrameResult
from router.service import RouterService
from router.tenants import Caller

router = APIRouter()
IMAGE_TYPES = ("image/jpeg", "image/png")
FORM = "multipart/form-data"
MAX_BATCH_FRAMES = 64
_CAMERA = TypeAdapter(Camera)


class AnswerRequest(BaseModel):
    """A frame to answer: base64 PNG or JPEG (a data URL is accepted), with an optional frame id."""

    model_config = ConfigDict(extra="forbid")

    program_id: str = Field(min_length=1, max_length=64)
    image: str = Field(min_length=1)
    frame_id: str | None = Field(default=None, max_length=200)
    camera: Camera | None = Field(
        default=None,
        description="The camera the frame comes from: its frames go through the reuse gate (a frame that barely "
        "differs from the camera's last frame that ran the program gets that answer again, at cost 0).",
    )


class FrameIn(BaseModel):
    """One frame to answer, however it came: its bytes and where they go."""

    model_config = ConfigDict(frozen=True)

    program_id: str
    image: bytes
    frame_id: str | None = None
    camera: str | None = None


_FORM_BODY = {
    "schema": {
        "type": "object",
        "required": ["program_id", "image"],
        "properties": {
            "program_id": {"type": "string"},
            "camera": {"type": "string"},
            "frame_id": {"type": "array", "items": {"type": "string"}},
            "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
        },
    }
}
_QUERY = (
    ("program_id", "With an image body: the program (required then)."),
    ("frame_id", "With an image body: the frame's id."),
    ("camera", "With an image body or a form: the camera (its frames go through the reuse gate)."),
)


@router.post(
    "/answer",
    response_model=FrameResult | FrameBatch,
    responses=error_responses(400, 401, 404, 413, 415, 422, 429),
    openapi_extra={
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
            for name, text in _QUERY
        ],
        "requestBody": frame_request_body(AnswerRequest, IMAGE_TYPES, {FORM: _FORM_BODY}),
    },
)
async def answer(request: Request, service: Service, caller: CurrentCaller) -> FrameResult | FrameBatch:
    """Answer a frame: base64 in JSON, the image itself as the body (``image/jpeg`` or
    ``image/png``, the program in the query), or uploaded as a form; a form with several
    ``image`` files is a batch, answered in order (one frame's failure is its own)."""
    frames = await _read_form(request) if content_type(request) == FORM else [await _read_frame(request)]
    if len(frames) == 1:
        return await _answer_one(request, service, caller, frames[0])
    items = []
    for frame in frames:
        try:
            result = await _answer_one(request, service, caller, frame)
        except RouterError as exc:
            items.append(AnswerItem(frame_id=frame.frame_id, status=status_of(exc), detail=str(exc)))
        else:
            items.append(AnswerItem(frame_id=frame.frame_id, result=result))
    return FrameBatch(results=items)


async def _answer_one(request: Request, service: RouterService, caller: Caller, frame: FrameIn) -> FrameResult:
    """Answer one frame once admission lets it run (QuotaExceeded or Overloaded at once if not)."""
    answer = functools.partial(
        service.answer, frame.program_id, frame.image, frame_id=frame.frame_id, camera=frame.camera, caller=caller
    )
    admission: Admission = request.app.state.admission
    try:
        async with admission.slot(caller.tenant):
            return await anyio.to_thread.run_sync(answer, limiter=request.app.state.answer_slots)
    except (QuotaExceeded, Unavailable) as exc:
        service.metrics.refused.labels(caller.tenant, type(exc).__name__).inc()
        raise


async def _read_frame(request: Request) -> FrameIn:
    """The one frame of a JSON body or of an image body (the program and the rest in the query)."""
    kind = content_type(request)
    if kind not in (*IMAGE_TYPES, "", "application/json"):
        raise UnsupportedMedia(
            f"content type {kind!r}: send application/json, image/jpeg, image/png or multipart/form-data"
        )
    body = await read_frame_body(request, AnswerRequest, raw_types=IMAGE_TYPES, invalid=FrameRejected)
    if body.fields is not None:
        fields = body.fields
        return FrameIn(program_id=fields.program_id, image=body.image, frame_id=fields.frame_id, camera=fields.camera)
    program_id = query_field(request, "program_id", required=True, invalid=FrameRejected)
    frame_id = query_field(request, "frame_id", max_length=200, invalid=FrameRejected)
    if not body.image:
        raise FrameRejected("the body is empty: send the image's bytes")
    camera = _camera(request.query_params.get("camera"))
    return FrameIn(program_id=program_id, image=body.image, frame_id=frame_id, camera=camera)


async def _read_form(request: Request) -> list[FrameIn]:
    """The frames of a form: one ``image`` file or more, with one ``frame_id`` field each or none."""
    form = await request.form()
    program_id = form.get("program_id")
    if not isinstance(program_id, str) or not program_id:
        raise FrameRejected("form field program_id is required")
    uploads = form.getlist("image")
    if not uploads or any(isinstance(upload, str) for upload in uploads):
        raise FrameRejected("form field image must be an uploaded file (one or more)")
    if len(uploads) > MAX_BATCH_FRAMES:
        raise FrameRejected(f"at most {MAX_BATCH_FRAMES} frames in one form")
    frame_ids = [value for value in form.getlist("frame_id") if isinstance(value, str)]
    if frame_ids and len(frame_ids) != len(uploads):
        raise FrameRejected(f"{len(frame_ids)} frame_id fields for {len(uploads)} images: one per image, or none")
    camera = form.get("camera")
    camera = _camera(camera if isinstance(camera, str) else request.query_params.get("camera"))
    frames = []
    for k, upload in enumerate(uploads):
        frame_id = frame_ids[k] if frame_ids else None
        frames.append(FrameIn(program_id=program_id, image=await upload.read(), frame_id=frame_id, camera=camera))
    return frames


def _camera(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return _CAMERA.validate_python(value)
    except ValidationError:
        raise FrameRejected("camera: letters, digits and . _ : - only, at most 100") from None
