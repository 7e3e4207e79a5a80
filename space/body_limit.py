"""An ASGI middleware that refuses request bodies above a size before they are read or parsed."""

from __future__ import annotations

import json


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Answers HTTP 413 to a request whose body is larger than the limit: at once when ``Content-Length`` says so
    (nothing is read), else as soon as the streamed (chunked) body passes it. ``multipart/*`` bodies (gradio's
    ``/upload``) get ``max_upload_bytes``, every other body ``max_json_bytes``."""

    def __init__(self, app, max_json_bytes: int, max_upload_bytes: int):
        self.app, self.max_json_bytes, self.max_upload_bytes = app, int(max_json_bytes), int(max_upload_bytes)

    async def _refuse(self, send, limit: int) -> None:
        body = json.dumps({"detail": f"Request body too large: the limit is {limit / 2**20:.0f} MB."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        limit = self.max_upload_bytes if multipart else self.max_json_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = True
            if too_large:
                return await self._refuse(send, limit)
        seen = 0
        started = overflow = False

        async def limited_receive():
            nonlocal seen, overflow
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    overflow = True
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if overflow:  # the app turned the aborted read into its own error (FastAPI: 400): answer 413 instead
                if not started:
                    started = True
                    await self._refuse(send, limit)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, limit)
