"""JSON request bodies validated *after* authentication, as problem details.

FastAPI parses a declared body model before any dependency runs, so a malformed body
would be answered 422 before the caller is even authenticated, and before an admin call
could be audited. Routes that authenticate take their body through :func:`json_body`
instead, declared after their authentication dependency: the caller is checked first, and
a bad body becomes a 422 problem (400 past ``MAX_BODY_BYTES``) raised where the audit sees it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from tether.api.problems import ProblemError

MAX_BODY_BYTES: Final = 1 << 20
Model = TypeVar("Model", bound=BaseModel)


def json_body(model: type[Model]) -> Callable[[Request], Awaitable[Model]]:
    """A dependency returning the request's JSON body as ``model`` (an empty body: ``{}``)."""

    async def parse(request: Request) -> Model:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise ProblemError(413, f"request body: larger than {MAX_BODY_BYTES} bytes")
        try:
            return model.model_validate_json(bytes(raw) or b"{}")
        except ValidationError as error:
            raise ProblemError(422, _describe(error)) from None

    return parse


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the JSON request body."""
    return {
        "requestBody": {
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"request body{'.' + where if where else ''}: {first.get('msg', 'invalid')}"
