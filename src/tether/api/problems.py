"""RFC 9457 problem details: the one shape of every error answer of the API."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON: Final = "application/problem+json"

log = logging.getLogger(__name__)


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None


def problem(
    status: int,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **members: Any,
) -> JSONResponse:
    """An ``application/problem+json`` response.

    The type is ``about:blank`` (RFC 9457 section 4.2.1): the status code says what kind of
    problem it is, its phrase is the title, and ``detail`` says what went wrong this time.
    ``members`` are extension members (RFC 9457 section 3.2), such as OAuth's ``error``.
    """
    body = Problem(title=_phrase(status), status=status, detail=detail)
    content = {**body.model_dump(exclude_none=True), **members}
    return JSONResponse(
        content, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


class ProblemError(Exception):
    """Raised by a route to answer with a problem; ``members`` are extension members."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **members: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.headers = dict(headers or {})
        self.members = members

    def response(self) -> JSONResponse:
        return problem(self.status, self.detail, headers=self.headers, **self.members)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_problem_handlers(app: FastAPI) -> None:
    """Make routing errors, validation errors and crashes answer as problem details."""
    app.add_exception_handler(ProblemError, _problem_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)


async def _problem_error(_request: Request, error: ProblemError) -> JSONResponse:
    return error.response()


async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    response = problem(error.status_code, str(error.detail))
    response.headers.update(error.headers or {})
    return response


async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return problem(422, f"{where}: {first.get('msg', 'invalid')}".strip(": "))


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # The client learns nothing of the internals; the log keeps the traceback.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return problem(500, "internal error; see the server log")
