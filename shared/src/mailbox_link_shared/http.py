"""HTTP plumbing shared by the services that have an API: bearer auth and one error shape.

Every 4xx body is {"error": <code>, "message": <sentence>, "fields": [{"field", "message"}]},
naming the field and the fix. Request values are never echoed back: they may be passwords.
"""

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException

from mailbox_link_shared.addresses import InvalidAddress, normalize_address
from mailbox_link_shared.api_errors import ApiErrorCode

logger = logging.getLogger(__name__)

PATH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
MAX_BODY_BYTES = 64 * 1024  # a link request is well under 4 KiB


class ApiError(Exception):
    """A 4xx answer with a machine code, a sentence, and optionally the fields at fault."""

    def __init__(
        self,
        status_code: int,
        error: ApiErrorCode,
        message: str,
        fields: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.fields = list(fields)
        self.headers = dict(headers or {})


def error_body(
    error: ApiErrorCode, message: str, fields: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    """Returns the JSON body of an error answer."""
    return {
        "error": error,
        "message": message,
        "fields": [{"field": name, "message": text} for name, text in fields],
    }


def address_from_path(email: str) -> str:
    """Returns the normalized address from a URL path, or answers 422 naming the field."""
    try:
        return normalize_address(email)
    except InvalidAddress as exc:
        raise ApiError(422, ApiErrorCode.INVALID_REQUEST, str(exc), [("email", str(exc))]) from None


def bearer_auth(service_keys: Mapping[str, SecretStr]) -> Callable[[Request], Awaitable[str]]:
    """Returns a dependency that admits a request carrying one of the configured service tokens."""
    tokens = [(name, key.get_secret_value().encode()) for name, key in service_keys.items()]

    async def authenticated_service(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        presented = token.strip().encode()
        if scheme.lower() == "bearer" and presented:
            for name, expected in tokens:
                if hmac.compare_digest(presented, expected):
                    return name
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            ApiErrorCode.UNAUTHORIZED,
            "Send a valid service token in the header 'Authorization: Bearer <token>'.",
            [("Authorization", "missing or not a configured service token")],
            headers={"WWW-Authenticate": "Bearer"},
        )

    return authenticated_service


def require_scope(
    scope: str, service_keys: Mapping[str, SecretStr], scopes: Mapping[str, Sequence[str]]
) -> Callable[[Request], Awaitable[str]]:
    """Returns a dependency that admits only a service whose key is granted `scope`."""
    authenticated_service = bearer_auth(service_keys)

    async def scoped_service(request: Request) -> str:
        name = await authenticated_service(request)
        if scope not in scopes.get(name, ()):
            raise ApiError(
                status.HTTP_403_FORBIDDEN,
                ApiErrorCode.FORBIDDEN,
                f"This route needs a service key granted the scope '{scope}'.",
                [("Authorization", f"use the key of a service granted '{scope}' "
                  "(MBL_SERVICE_KEY_SCOPES)")],
            )  # fmt: skip
        return name

    return scoped_service


def install_error_handlers(app: FastAPI) -> None:
    """Makes every error answer use one shape, with no request values echoed back."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        body = error_body(exc.error, exc.message, exc.fields)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        fields = [(_field_name(err["loc"]), _clean_message(err)) for err in exc.errors()]
        body = error_body(
            ApiErrorCode.INVALID_REQUEST, "Some fields are missing or invalid.", fields
        )
        return JSONResponse(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        body = error_body(_http_error_code(exc.status_code), str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_backend_down(_: Request, exc: Exception) -> JSONResponse:
        logger.error("backend unavailable: %s", type(exc).__name__)
        body = error_body(
            ApiErrorCode.TEMPORARILY_UNAVAILABLE, "A backend is not answering; retry shortly."
        )
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    app.add_exception_handler(ApiError, on_api_error)
    # Infrastructure trouble is not the caller's fault, but it deserves a clear, retryable answer.
    app.add_exception_handler(PyMongoError, on_backend_down)
    app.add_exception_handler(KafkaError, on_backend_down)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)


def _field_name(loc: Sequence[Any]) -> str:
    # ("body", "imap", "port") -> "imap.port"; ("path", "user_id") -> "user_id"
    parts = [str(p) for p in loc if p not in ("body", "path", "query", "header")]
    return ".".join(parts) or "body"


def _clean_message(err: Mapping[str, Any]) -> str:
    message = str(err.get("msg", "is invalid"))
    # pydantic prefixes messages raised from validators with "Value error, ".
    return message.removeprefix("Value error, ")


def _http_error_code(status_code: int) -> ApiErrorCode:
    return {404: ApiErrorCode.NOT_FOUND, 405: ApiErrorCode.METHOD_NOT_ALLOWED}.get(
        status_code, ApiErrorCode.BAD_REQUEST
    )


Hook = Callable[[], Awaitable[None]]


def build_http_app(
    *,
    title: str,
    router: APIRouter | None,
    service_keys: Mapping[str, SecretStr],
    on_start: Sequence[Hook],
    on_stop: Sequence[Hook],
    public_router: APIRouter | None = None,
) -> FastAPI:
    """Returns an app whose `router` routes need a service token, with `public_router` routes
    (pages a browser visits) and /healthz open, and start/stop hooks."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for start in on_start:
            await start()
        try:
            yield
        finally:
            for stop in on_stop:
                await stop()

    app = FastAPI(title=title, version="1.0.0", lifespan=lifespan)
    install_error_handlers(app)

    @app.middleware("http")
    async def refuse_large_bodies(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            body = error_body(
                ApiErrorCode.REQUEST_TOO_LARGE,
                f"Send at most {MAX_BODY_BYTES} bytes with a valid Content-Length.",
                [("body", "too large")],
            )
            return JSONResponse(body, status_code=413)
        return await call_next(request)

    if router is not None:
        app.include_router(router, dependencies=[Depends(bearer_auth(service_keys))])
    if public_router is not None:
        app.include_router(public_router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serves the app until interrupted, with logging left to configure_logging."""
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
