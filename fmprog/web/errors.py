"""One error shape for every fmprog HTTP service: each error reply is an ``ErrorResponse`` (a
``detail`` string), validation errors are one readable line, and the OpenAPI document says so."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ErrorResponse(BaseModel):
    """Every error reply: one line that names the problem."""

    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's error codes, all with the shared ErrorResponse shape."""
    return {code: {"model": ErrorResponse} for code in codes}


def declare_error_shape(app: FastAPI) -> None:
    """Make the OpenAPI document say what every error reply is: the ``ErrorResponse`` shape (a
    ``detail`` string), including the 422 FastAPI adds by itself to routes with parameters (its
    ``HTTPValidationError``, a list, which ``validation_error_handler`` never returns)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        ours = "#/components/schemas/ErrorResponse"
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for code, response in operation.get("responses", {}).items():
                    if str(code)[0] in "45":
                        response["content"] = {"application/json": {"schema": {"$ref": ours}}}
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["ErrorResponse"] = ErrorResponse.model_json_schema()
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """422 with one readable line per problem, each naming its field: ``body.label: Field required``."""
    if not isinstance(exc, RequestValidationError):
        raise exc
    problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
    return JSONResponse({"detail": problems}, status_code=422)


def error_reply(exc: Exception, status: int) -> JSONResponse:
    """``exc`` as an ``ErrorResponse`` with ``status``; with a ``Retry-After`` header (whole seconds,
    at least 1) when the error says when trying again makes sense (its ``retry_after_s``)."""
    wait = getattr(exc, "retry_after_s", None)
    headers = {"retry-after": str(max(1, math.ceil(wait)))} if wait is not None else None
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


def status_for(exc: BaseException, statuses: Mapping[type[BaseException], int], default: int = 422) -> int:
    """The status ``statuses`` gives the nearest class of ``exc`` (its own, then its bases in
    order); ``default`` when it gives none."""
    for kind in type(exc).__mro__:
        if kind in statuses:
            return statuses[kind]
    return default


def add_error_shape(
    app: FastAPI,
    statuses: Mapping[type[Exception], int] | None = None,
    *,
    on_error: Callable[[Request, int], None] | None = None,
) -> None:
    """Make every error reply of ``app`` an ``ErrorResponse``: a validation error is a 422 of one
    readable line, an exception of a class in ``statuses`` (or of a subclass) the status of its
    nearest class there (``on_error``, when given, is told of each), and the OpenAPI document
    declares that shape for every error code."""
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    table = dict(statuses or {})

    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        status = status_for(exc, table)
        if on_error is not None:
            on_error(request, status)
        return error_reply(exc, status)

    for kind in table:
        app.add_exception_handler(kind, domain_error)
    declare_error_shape(app)
