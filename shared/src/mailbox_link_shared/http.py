"""HTTP plumbing shared by the services that have an API: scoped bearer auth, one error shape.

Every 4xx body is {"error": <code>, "message": <sentence>, "fields": [{"field", "message"}]},
naming the field and the fix (`body` when the body as a whole is malformed or too large).
Request values are never echoed back: they may be passwords.
"""

import base64
import binascii
import functools
import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pymongo.errors import PyMongoError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from mailbox_link_shared.addresses import InvalidAddress, normalize_address
from mailbox_link_shared.api_docs import install_api_docs
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.health import BackgroundStart, Readiness
from mailbox_link_shared.metrics import HttpMetrics, metrics_endpoint
from mailbox_link_shared.scopes import CallerKey, Scope
from mailbox_link_shared.strict_json import InvalidJsonField, MalformedJson, parse_json
from mailbox_link_shared.tracing import TracingMiddleware, flush_tracing

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
        "message": _printable(message),
        "fields": [
            {"field": _printable(name)[:200], "message": _printable(text)} for name, text in fields
        ],
    }


def _printable(text: str) -> str:
    # A field name may come from the caller (an unknown key); one with a lone surrogate would
    # make the answer itself unencodable, a 500.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def address_from_path(email: str, field: str = "email") -> str:
    """Returns the normalized address from a URL path, or answers 422 naming the field."""
    try:
        return normalize_address(email)
    except InvalidAddress as exc:
        raise ApiError(422, ApiErrorCode.INVALID_REQUEST, str(exc), [(field, str(exc))]) from None


def address_or_mailbox_id(mailbox: str) -> tuple[str | None, str | None]:
    """Returns (address, None) for an address from a URL path, (None, mailbox_id) for a
    mailbox id, or answers 422 naming the field. Every address has exactly one @, a mailbox
    id none, so one path segment can name either."""
    if "@" in mailbox:
        return address_from_path(mailbox, "mailbox"), None
    if not re.fullmatch(PATH_ID_PATTERN, mailbox):
        raise ApiError(
            422,
            ApiErrorCode.INVALID_REQUEST,
            "Name the mailbox by its address or its mailbox_id.",
            [("mailbox", "use an email or a mailbox_id from GET .../mailboxes")],
        )
    return None, mailbox


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

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        fields = [_http_error_field(request, exc)]
        body = error_body(_http_error_code(exc.status_code), str(exc.detail), fields)
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
    if err.get("type") == "json_invalid":  # its loc is ("body", <offset>), not a field
        return "the body is not valid JSON; send one JSON object in UTF-8"
    message = str(err.get("msg", "is invalid"))
    # pydantic prefixes messages raised from validators with "Value error, ".
    return message.removeprefix("Value error, ")


def _http_error_field(request: Request, exc: HTTPException) -> tuple[str, str]:
    """Names what a routing or reading error is about: the path, the method or the body."""
    if exc.status_code == 404:
        return ("path", "no route has this path; check it against the API's documentation")
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return ("method", f"this route does not take {request.method}; it takes {allowed}")
    return ("body", "the body could not be read; send it again, as one JSON object")


def _http_error_code(status_code: int) -> ApiErrorCode:
    return {404: ApiErrorCode.NOT_FOUND, 405: ApiErrorCode.METHOD_NOT_ALLOWED}.get(
        status_code, ApiErrorCode.BAD_REQUEST
    )


class StrictJsonRequest(Request):
    """A request whose JSON body is parsed by `strict_json`: no duplicate keys, no lone
    surrogates, no NaN, no huge numbers, no deep nesting."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = parse_json(await self.body())
            except MalformedJson as exc:
                raise ApiError(
                    status.HTTP_400_BAD_REQUEST,
                    ApiErrorCode.BAD_REQUEST,
                    f"The body is malformed: {exc.reason}.",
                    [("body", "send one well-formed JSON object in UTF-8")],
                ) from None
            except InvalidJsonField as exc:
                raise ApiError(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    ApiErrorCode.INVALID_REQUEST,
                    "Some fields are missing or invalid.",
                    [(exc.field, exc.reason)],
                ) from None
        return self._json


class StrictJsonRoute(APIRoute):
    """A route that reads its JSON body with StrictJsonRequest: give every router with a body
    `route_class=StrictJsonRoute`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            try:
                return await handler(StrictJsonRequest(request.scope, request.receive))
            except HTTPException as exc:
                # FastAPI turns any error from request.json() into a field-less 400; ours
                # already says what is wrong.
                if isinstance(exc.__cause__, ApiError):
                    raise exc.__cause__ from None
                raise

        return strict_handler


class BodyLimit:
    """Refuses a request body over `max_bytes` while it streams in, chunked or not.

    A declared Content-Length over the cap is refused before a byte is read. Otherwise the
    bytes are counted as the app receives them; the chunk that passes the cap is never handed
    on: the 413 goes out at once, the app sees the client as gone, and the connection is
    closed, so the server holds at most the cap (plus one read) of any body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, send)
            return
        received = 0
        over = answered = started = False

        async def capped_receive() -> Message:
            nonlocal received, over, answered
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    if not started:  # else the app's own answer is under way: let it finish
                        answered = True
                        await self._too_large(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:  # what the app answers to the "disconnect" after our 413 is dropped
                return
            started = True
            await send(message)

        await self.app(scope, capped_receive, guarded_send)

    async def _too_large(self, scope: AsgiScope, send: Send) -> None:
        body = error_body(
            ApiErrorCode.REQUEST_TOO_LARGE,
            f"The body is over {self.max_bytes} bytes.",
            [("body", f"send at most {self.max_bytes} bytes (a link request is well under 4 KiB)")],
        )
        # The connection stays open: the server reads the rest of the body and throws it away
        # (uvicorn discards what arrives after a complete answer), so the client, still
        # sending, reads this answer instead of a connection reset.
        response = JSONResponse(body, status_code=413)
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


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
    readiness: Readiness | None = None,
) -> FastAPI:
    """Returns an app whose `router` routes each need a scope (a `keys.require(...)` guard on
    the route or its router: the app refuses to build without one), with `public_router` routes
    (pages a browser visits) and /healthz open, /docs and /openapi.json for any valid key
    unless `api_docs` is off, and start/stop hooks.

    With `readiness`, the start hooks run in the background, retried until they succeed
    (Kafka or MongoDB may be away): the server answers at once, /readyz is 503 until they all
    ran and while a check fails (health.py)."""
    background = BackgroundStart(title, on_start) if readiness is not None else None
    if readiness is not None and background is not None:
        readiness.add("started", background.started)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if background is not None:
            await background.start()
        else:
            for start in on_start:
                await start()
        try:
            yield
        finally:
            if background is not None:
                await background.stop()
            for stop in on_stop:
                await stop()
            await flush_tracing()  # last: the stop hooks' own spans go too

    # FastAPI's own /docs loads Swagger UI from a public CDN and its /openapi.json is open:
    # both off, replaced by install_api_docs below.
    app = FastAPI(
        title=title,
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # FastAPI's own server spans record the raw path (url.path), which carries addresses:
        # off, TracingMiddleware records the route template instead.
        telemetry={"tracing": False, "operation_spans": False, "logs": False},
    )
    install_error_handlers(app)

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(HttpMetrics)
    # Outermost: the server span covers the whole request, a refused body included.
    app.add_middleware(TracingMiddleware)

    if router is not None:
        _check_every_route_is_scoped(router)
        app.include_router(router)
    if public_router is not None:
        app.include_router(public_router)
    if api_docs:
        install_api_docs(app, functools.partial(keys.identify, allow_basic=True))

    # /livez: the process and its event loop answer. /healthz is its old name, kept for
    # probes configured before /readyz existed.
    @app.get("/livez", include_in_schema=False)
    @app.get("/healthz", include_in_schema=False)
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if readiness is None:
            return JSONResponse({"status": "ready", "checks": {}, "failing": []})
        report = await readiness.report()
        return JSONResponse(report.body(), status_code=200 if report.ready else 503)

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
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
