"""ASGI middleware: request body size limit and request ids."""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control.errors import problem_response


class BodyLimitMiddleware:
    """Answer 413 to any body over `max_bytes`, declared or streamed, before a handler runs.

    The body is read up to the limit before the app is called and then handed over whole. A
    limit enforced inside the app's own reads would surface wherever the app happens to read:
    the framework turns a failed body read into a 400-class parse error, and a route that
    never reads its body would run with an over-limit body. Reading first makes the answer the
    same 413 on every route, however the body is framed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value) > self.max_bytes
                except ValueError:
                    declared = True
                if declared:
                    await self._too_large(scope, receive, send)
                    return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before the body ended: nobody to answer
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                # The rest stays unread (the server discards it or closes the connection):
                # reading on would let an endless stream hold the request open.
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body_sent = False

        async def replay() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Built only when needed: every request passes through here.
        answer = problem_response(
            "payload_too_large", f"the request body exceeds {self.max_bytes} bytes"
        )
        await answer(scope, receive, send)


class RequestIdMiddleware:
    """Give every request an id (`X-Request-Id`), echoed back and kept in the scope
    (`scope["request_id"]`) for the request's log lines; nothing secret."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope["request_id"] = request_id  # for the middleware and handlers that log it

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)
