"""The HTTP access log, without what could carry a credential.

aiohttp's default line holds the request line with its query string and the Referer, and a
browser's WebSocket may carry its bearer token as ``/ws?token=...``: log files would collect
tokens. This logger writes the path alone (a query string becomes ``?…``), and no Referer.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger


class RedactedAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        path, query_mark, _ = request.raw_path.partition("?")
        self.logger.info(
            '%s "%s %s%s HTTP/%d.%d" %d %d %.3fs "%s"',
            request.remote,
            request.method,
            path,
            "?…" if query_mark else "",
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
            request.headers.get("User-Agent", "-"),
        )
