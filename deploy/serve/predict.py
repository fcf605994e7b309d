"""POST /v1/predict as a plain ASGI handler: the one route on the hot path.

Behaviour is that of a FastAPI route with a pydantic body (same validation, same error
messages), without its per-request machinery (routing, dependency injection, request and
response objects): under load this route is the server's whole Python cost per request
beyond inference, and every microsecond of it is taken from ONNX Runtime's two cores.
The body is parsed by orjson and validated by pydantic-core, and the answer is encoded by
orjson. The other routes stay on FastAPI.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from deploy.serve.batcher import MicroBatcher

log = logging.getLogger("tuneline.serve")
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1, description="Texts to classify")


class ModelNotReady(RuntimeError):
    """No model has been loaded yet."""


class RequestError(Exception):
    """An answer other than 200: HTTP status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: list | None = None,
                 problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers, self.problems = headers or [], problems


def describe_validation(errors: list[dict]) -> list[str]:
    """pydantic errors as `field: message` lines (malformed JSON said as such)."""
    out = []
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            out.append(f"malformed JSON: {reason}".rstrip(": "))
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        out.append(f"{loc}: {err.get('msg')}")
    return out


def prediction(labels: list[str], probs) -> dict[str, Any]:
    values = probs.tolist()
    best = max(range(len(values)), key=values.__getitem__)
    return {"label": labels[best], "score": values[best],
            "scores": dict(zip(labels, values, strict=True))}


class PredictEndpoint:
    """ASGI app for POST /v1/predict: auth, body cap, validation, limits, batching."""

    def __init__(self, batcher: MicroBatcher, is_ready: Callable[[], bool], *,
                 token: str | None, max_body: int, max_texts: int, max_chars: int) -> None:
        self.batcher = batcher
        self.is_ready = is_ready
        self.token = token.encode() if token else None
        self.max_body, self.max_texts, self.max_chars = max_body, max_texts, max_chars

    async def __call__(self, scope: dict[str, Any], receive, send: Send) -> None:
        try:
            if scope["method"] != "POST":
                raise RequestError(405, "method not allowed; use POST",
                                   [(b"allow", b"POST")])
            self._authorize(scope)
            texts = self._parse(await self._body(receive))
            if not self.is_ready():
                raise RequestError(503, "no model loaded yet; see /readyz")
            try:
                (version, labels), rows = await self.batcher.submit(texts)
            except ModelNotReady as exc:
                raise RequestError(503, f"{exc}; see /readyz") from None
            body = orjson.dumps({"model_version": version,
                                 "predictions": [prediction(labels, r) for r in rows]})
            await respond(send, 200, body)
        except RequestError as exc:
            payload: dict[str, Any] = {"error": exc.message}
            if exc.problems is not None:
                payload["problems"] = exc.problems
            await respond(send, exc.status, orjson.dumps(payload), exc.headers)
        except Exception as exc:  # the client gets a JSON 500, the log the traceback
            log.exception("predict request failed")
            await respond(send, 500, orjson.dumps(
                {"error": f"internal error: {type(exc).__name__}: {exc}"}))

    def _authorize(self, scope: dict[str, Any]) -> None:
        if self.token is None:
            return
        value = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        scheme, _, credential = value.partition(b" ")
        challenge = [(b"www-authenticate", b"Bearer")]
        if scheme.lower() != b"bearer" or not credential.strip():
            raise RequestError(401, "missing bearer token (Authorization: Bearer <token>)",
                               challenge)
        if not hmac.compare_digest(credential.strip(), self.token):
            raise RequestError(401, "invalid bearer token", challenge)

    async def _body(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise RequestError(413, f"request body larger than {self.max_body} bytes "
                                        "(serve.max_texts x serve.max_text_chars)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _parse(self, body: bytes) -> list[str]:
        try:
            texts = PredictRequest.model_validate(orjson.loads(body)).texts
        except orjson.JSONDecodeError as exc:
            problems = [f"malformed JSON: {exc}"]
        except ValidationError as exc:
            problems = describe_validation(exc.errors(include_url=False))
        else:
            problems = None
        if problems:
            raise RequestError(422, "invalid request: " + "; ".join(problems),
                               problems=problems)
        if len(texts) > self.max_texts:
            raise RequestError(413, f"too many texts: {len(texts)} > "
                                    f"serve.max_texts={self.max_texts}")
        for i, text in enumerate(texts):
            if len(text) > self.max_chars:
                raise RequestError(413, f"texts[{i}] is too long: {len(text)} characters > "
                                        f"serve.max_text_chars={self.max_chars}")
        return texts


async def respond(send: Send, status: int, body: bytes, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
