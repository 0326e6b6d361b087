"""The API's reference at /docs, rendered from its OpenAPI schema on the server: plain HTML, no
script and nothing fetched from elsewhere (FastAPI's default page loads Swagger UI from a CDN,
and is blank on a machine without internet)."""
from __future__ import annotations

from html import escape

METHODS = ("get", "post", "put", "delete")


def render(schema: dict) -> str:
    info = schema.get("info", {})
    parts = [f"<h1>{escape(info.get('title', 'API'))} {escape(str(info.get('version', '')))}</h1>",
             f"<p>{escape(info.get('description', ''))}</p>",
             '<p>The machine-readable schema: <a href="/openapi.json">/openapi.json</a>.</p>']
    for path, operations in schema.get("paths", {}).items():
        for method in METHODS:
            operation = operations.get(method)
            if operation is not None:
                parts.append(_operation(method, path, operation))
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>srtrt serve API</title>"
            "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "code{background:#eee;padding:0 .2em}section{border-top:1px solid #ccc;padding:.4em 0}</style>"
            "</head><body>" + "".join(parts) + "</body></html>")


def _operation(method: str, path: str, operation: dict) -> str:
    lines = [f"<section><h2><code>{method.upper()} {escape(path)}</code></h2>",
             f"<p>{escape(operation.get('summary', ''))}</p>"]
    body = operation.get("requestBody", {}).get("content", {})
    if body:
        lines.append("<p>Body: " + ", ".join(f"<code>{escape(kind)}</code>" for kind in body) + "</p>")
    parameters = operation.get("parameters", [])
    if parameters:
        lines.append("<p>Parameters: " + ", ".join(
            f"<code>{escape(p['name'])}</code> ({escape(p.get('in', ''))})" for p in parameters) + "</p>")
    responses = operation.get("responses", {})
    lines.append("<ul>" + "".join(f"<li><code>{escape(status)}</code> {escape(answer.get('description', ''))}</li>"
                                  for status, answer in sorted(responses.items())) + "</ul></section>")
    return "\n".join(lines)
