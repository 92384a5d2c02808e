"""HTTP plumbing shared by the services that have an API: scoped bearer auth, one error shape.

Every 4xx body is {"error": <code>, "message": <sentence>, "fields": [{"field", "message"}]},
naming the field and the fix. Request values are never echoed back: they may be passwords.
"""

import base64
import binascii
import functools
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
from fastapi.routing import APIRoute
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException

from mailbox_link_shared.addresses import InvalidAddress, normalize_address
from mailbox_link_shared.api_docs import install_api_docs
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.scopes import CallerKey, Scope

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


class CallerKeys:
    """The configured service keys: who presents a token, and route guards by scope."""

    def __init__(self, keys: Sequence[CallerKey]) -> None:
        self._tokens = [(key, key.token.get_secret_value().encode()) for key in keys]

    def identify(self, request: Request, *, allow_basic: bool = False) -> CallerKey:
        """Returns the key presented in Authorization, or answers 401 naming the header.

        `allow_basic` also takes the token as the password of HTTP Basic, which browsers ask
        for themselves: only the docs page, which a person opens in a browser, allows it."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        presented = credentials.strip().encode()
        if allow_basic and scheme.lower() == "basic":
            presented = _basic_password(credentials.strip())
            scheme = "bearer"
        if scheme.lower() == "bearer" and presented:
            for key, expected in self._tokens:
                if hmac.compare_digest(presented, expected):
                    return key
        challenge = 'Basic realm="mailbox-link API docs"' if allow_basic else "Bearer"
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            ApiErrorCode.UNAUTHORIZED,
            "Send a valid service token in the header 'Authorization: Bearer <token>'.",
            [("Authorization", "missing or not a configured service token")],
            headers={"WWW-Authenticate": challenge},
        )

    def require(self, *scopes: Scope) -> "ScopeGuard":
        """Returns a route dependency admitting keys granted any of `scopes`."""
        return ScopeGuard(self, frozenset(scopes))


class ScopeGuard:
    """A route dependency: a valid key (401), granted one of the route's scopes (403), acting
    for an account it may act for when the path names one (404, as for an unknown account)."""

    def __init__(self, keys: CallerKeys, scopes: frozenset[Scope]) -> None:
        self.keys = keys
        self.scopes = scopes

    async def __call__(self, request: Request) -> CallerKey:
        key = self.keys.identify(request)
        if not key.scopes & self.scopes:
            needed = " or ".join(f"'{s}'" for s in sorted(self.scopes))
            raise ApiError(
                status.HTTP_403_FORBIDDEN,
                ApiErrorCode.FORBIDDEN,
                f"This route needs a service key granted the scope {needed}.",
                [("Authorization", f"use the key of a service granted {needed} "
                  "(MBL_SERVICE_KEY_SCOPES)")],
            )  # fmt: skip
        account_id = request.path_params.get("account_id")
        if account_id is not None and not key.may_act_for(account_id):
            # The same answer whether or not the account exists: a key bound to other accounts
            # learns nothing about this one (not even that it has users).
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                ApiErrorCode.ACCOUNT_NOT_FOUND,
                "No such account for this service key.",
                [("account_id", "use an account this key is bound to (MBL_SERVICE_KEY_ACCOUNTS)")],
            )
        return key


def scoped(guard: ScopeGuard, *routers: APIRouter) -> APIRouter:
    """Returns one router holding `routers`' routes, each admitting only what `guard` admits."""
    combined = APIRouter(dependencies=[Depends(guard)])
    for router in routers:
        combined.include_router(router)
    return combined


def _basic_password(credentials: str) -> bytes:
    try:
        decoded = base64.b64decode(credentials, validate=True)
    except binascii.Error:
        return b""
    return decoded.partition(b":")[2]


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
    keys: CallerKeys,
    on_start: Sequence[Hook],
    on_stop: Sequence[Hook],
    public_router: APIRouter | None = None,
    api_docs: bool = True,
) -> FastAPI:
    """Returns an app whose `router` routes each need a scope (a `keys.require(...)` guard on
    the route or its router: the app refuses to build without one), with `public_router` routes
    (pages a browser visits) and /healthz open, /docs and /openapi.json for any valid key
    unless `api_docs` is off, and start/stop hooks."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for start in on_start:
            await start()
        try:
            yield
        finally:
            for stop in on_stop:
                await stop()

    # FastAPI's own /docs loads Swagger UI from a public CDN and its /openapi.json is open:
    # both off, replaced by install_api_docs below.
    app = FastAPI(
        title=title,
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
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
        _check_every_route_is_scoped(router)
        app.include_router(router)
    if public_router is not None:
        app.include_router(public_router)
    if api_docs:
        install_api_docs(app, functools.partial(keys.identify, allow_basic=True))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _check_every_route_is_scoped(router: APIRouter) -> None:
    # Fail closed: a route added without a scope would admit every key, as all routes did
    # before scopes (issue 13), so the service does not start.
    unscoped = [
        f"{sorted(route.methods or ())} {route.path}"
        for route in router.routes
        if isinstance(route, APIRoute)
        and not any(isinstance(d.dependency, ScopeGuard) for d in route.dependencies)
    ]
    if unscoped:
        raise ValueError(f"routes without a scope guard (keys.require(...)): {unscoped}")


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serves the app until interrupted, with logging left to configure_logging."""
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
