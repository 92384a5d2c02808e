"""/docs and /openapi.json for callers with a valid key: a page rendered here from the OpenAPI
document, with no script and nothing loaded from anywhere (FastAPI's own page loads Swagger UI
from a public CDN; no PyPI package we may use ships its files). docs/adr/0017.
"""

import base64
import hashlib
import html
import json
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "h2{font-size:1.05rem;margin-top:2rem}code,pre{background:#f4f4f4}"
    "pre{padding:.5rem;overflow-x:auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
# Nothing but the page's own inline style may load: no script, image, font, frame or fetch.
DOCS_CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_METHODS = ("get", "post", "put", "patch", "delete")


def install_api_docs(app: FastAPI, identify: Callable[[Request], object]) -> None:
    """Adds /openapi.json and /docs, answering only a request `identify` admits."""

    async def any_valid_key(request: Request) -> None:
        identify(request)

    guard = [Depends(any_valid_key)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi(), headers={"Cache-Control": "no-store"})

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    async def docs() -> HTMLResponse:
        headers = {
            "Content-Security-Policy": DOCS_CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
        return HTMLResponse(docs_page(app.openapi()), headers=headers)


def docs_page(schema: dict[str, Any]) -> str:
    """Returns the OpenAPI document as one HTML page: each operation, then the body schemas."""
    info = schema.get("info", {})
    title = _e(f"{info.get('title', 'API')} {info.get('version', '')}")
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>",
        "<p>Every route takes <code>Authorization: Bearer &lt;service token&gt;</code>; the "
        'machine-readable document is <a href="/openapi.json">/openapi.json</a>.</p>',
    ]
    for path, operations in schema.get("paths", {}).items():
        for method in _METHODS:
            if method in operations:
                parts.append(_operation(method, path, operations[method]))
    components = schema.get("components", {}).get("schemas", {})
    if components:
        parts.append("<h2 id=schemas>Schemas</h2>")
        for name, body in components.items():
            parts.append(f'<h3 id="{_e(name)}">{_e(name)}</h3><pre>{_json(body)}</pre>')
    parts.append("</body></html>")
    return "".join(parts)


def _operation(method: str, path: str, operation: dict[str, Any]) -> str:
    parts = [f"<h2>{method.upper()} <code>{_e(path)}</code></h2>"]
    if operation.get("summary"):
        parts.append(f"<p><b>{_e(operation['summary'])}</b></p>")
    if operation.get("description"):
        parts.append(f"<p>{_e(operation['description'])}</p>")
    parameters = operation.get("parameters", [])
    if parameters:
        rows = "".join(
            f"<tr><td><code>{_e(p.get('name', ''))}</code></td><td>{_e(p.get('in', ''))}</td>"
            f"<td>{'yes' if p.get('required') else 'no'}</td>"
            f"<td><code>{_json(p.get('schema', {}))}</code></td></tr>"
            for p in parameters
        )
        parts.append(
            "<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>"
            f"{rows}</table>"
        )
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        parts.append(f"<p>Body (JSON):</p><pre>{_json(body.get('schema', {}))}</pre>")
    answers = ", ".join(
        f"{_e(code)} {_e(answer.get('description', ''))}"
        for code, answer in operation.get("responses", {}).items()
    )
    parts.append(f"<p>Answers: {answers}</p>")
    return "".join(parts)


def _json(value: Any) -> str:
    return _e(json.dumps(value, indent=2, sort_keys=True))


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
