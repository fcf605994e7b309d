"""POST /v1/predict as a plain ASGI handler: the one route on the hot path.

Behaviour is that of a FastAPI route with a pydantic body (same validation, same error
messages), without its per-request machinery (routing, dependency injection, request and
response objects): under load this route is the server's whole Python cost per request
beyond inference, and every microsecond of it is taken from ONNX Runtime's two cores.
The body is parsed by orjson and validated by pydantic-core, and the answer is encoded by
orjson. The other routes stay on FastAPI.

Each request has one deadline, `serve.request_timeout_s` after it arrived: a body not
read by then is a 408 (the client is too slow), a result not there by then a 504 (the
server is). A full queue is a 503 with Retry-After, answered without queueing. An
unexpected error is a 500 whose body says only "internal error" and an id; the log line
with the same id has the traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from deploy.serve.batcher import DeadlineExceeded, MicroBatcher, QueueFull

log = logging.getLogger("tuneline.serve")
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1, description="Texts to classify")


class ModelNotReady(RuntimeError):
    """No model has been loaded yet."""


class RequestError(Exception):
    """An answer other than 200: HTTP status, message, extra headers, and the reason the
    metrics count it under when the status alone does not say (e.g. 503 "overloaded")."""

    def __init__(self, status: int, message: str, headers: list | None = None,
                 problems: list[str] | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers, self.problems, self.reason = headers or [], problems, reason


# Where the handler leaves the reason of a refusal for the metrics middleware.
REASON_KEY = "tuneline.reason"


def internal_error(what: str) -> dict[str, str]:
    """Log the exception being handled under a new id; return the generic body to send.

    The client learns nothing about the server's insides (no exception text, paths or
    traceback); whoever holds the id finds the details in the log."""
    error_id = secrets.token_hex(6)
    log.exception("%s (error id %s)", what, error_id)
    return {"error": "internal error", "error_id": error_id}


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


class PredictEndpoint:
    """ASGI app for POST /v1/predict: auth, body cap, validation, limits, batching."""

    def __init__(self, batcher: MicroBatcher, is_ready: Callable[[], bool], *,
                 token: str | None, max_body: int, max_texts: int, max_chars: int,
                 timeout_s: float, retry_after_s: int) -> None:
        self.batcher = batcher
        self.is_ready = is_ready
        self.token = token.encode() if token else None
        self.max_body, self.max_texts, self.max_chars = max_body, max_texts, max_chars
        self.timeout_s = timeout_s
        self.retry_after = [(b"retry-after", str(retry_after_s).encode())]

    async def __call__(self, scope: dict[str, Any], receive, send: Send) -> None:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            if scope["method"] != "POST":
                raise RequestError(405, "method not allowed; use POST",
                                   [(b"allow", b"POST")])
            self._authorize(scope)
            request = self.parse(await self._body_by(receive, deadline), scope)
            if not self.is_ready():
                raise RequestError(503, "no model loaded yet; see /readyz", self.retry_after)
            (version, runtime), rows = await self._submit(request.texts, deadline)
            await respond(send, 200, self.answer(request, version, runtime, rows))
        except RequestError as exc:
            if exc.reason is not None:
                scope[REASON_KEY] = exc.reason
            payload: dict[str, Any] = {"error": exc.message}
            if exc.problems is not None:
                payload["problems"] = exc.problems
            await respond(send, exc.status, orjson.dumps(payload), exc.headers)
        except Exception:  # the client gets a generic JSON 500, the log the traceback
            await respond(send, 500, orjson.dumps(internal_error("predict request failed")))

    async def _submit(self, texts: list[str], deadline: float):
        try:
            return await self.batcher.submit(texts, deadline)
        except ModelNotReady as exc:
            raise RequestError(503, f"{exc}; see /readyz", self.retry_after) from None
        except QueueFull as exc:
            raise RequestError(503, f"overloaded: {exc} (serve.max_queued_texts); retry later",
                               self.retry_after, reason="overloaded") from None
        except DeadlineExceeded as exc:
            where = "its batch was still running" if exc.started else "it was still queued"
            raise RequestError(504, f"no result within serve.request_timeout_s="
                                    f"{self.timeout_s:g} s ({where})",
                               reason="deadline_exceeded") from None

    async def _body_by(self, receive, deadline: float) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._body(receive)
        except TimeoutError:
            raise RequestError(408, "request body not received within "
                                    f"serve.request_timeout_s={self.timeout_s:g} s",
                               [(b"connection", b"close")]) from None

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
                                        "(serve.max_body_bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def parse(self, body: bytes, scope: dict[str, Any]) -> Any:
        """The validated request; its `texts` are what the batcher classifies."""
        request = validate_json(PredictRequest, body, 422)
        self.check_limits(request.texts)
        return request

    def answer(self, request: Any, version: str, runtime: Any, rows: list) -> bytes:
        """The 200 body for the batcher's answers to `request.texts`."""
        return orjson.dumps({"model_version": version,
                             "predictions": [runtime.render(r) for r in rows]})

    def check_limits(self, texts: list[str]) -> None:
        """413 past serve.max_texts texts or serve.max_text_chars characters in one."""
        if len(texts) > self.max_texts:
            raise RequestError(413, f"too many texts: {len(texts)} > "
                                    f"serve.max_texts={self.max_texts}")
        for i, text in enumerate(texts):
            if len(text) > self.max_chars:
                raise RequestError(413, f"texts[{i}] is too long: {len(text)} characters > "
                                        f"serve.max_text_chars={self.max_chars}")


def validate_json(model: type[BaseModel], body: bytes, status: int) -> Any:
    """`body` parsed by orjson and validated as `model`; else a RequestError(`status`)
    listing every problem."""
    try:
        return model.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        problems = [f"malformed JSON: {exc}"]
    except ValidationError as exc:
        problems = describe_validation(exc.errors(include_url=False))
    raise RequestError(status, "invalid request: " + "; ".join(problems), problems=problems)


async def respond(send: Send, status: int, body: bytes, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
