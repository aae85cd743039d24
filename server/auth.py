"""The API token: with ``TINGJI_API_TOKEN`` set, every ``/api`` route needs
``Authorization: Bearer <token>`` (compared in constant time)."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler


def token_guard(token: str | None) -> Any:
    """A Litestar guard for ``token`` (None: no token, every request passes)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
                    ) -> None:
        if not token:
            return
        scheme, _sep, given = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.encode()):
            raise NotAuthorizedException("missing or wrong API token: send "
                                         "'Authorization: Bearer <TINGJI_API_TOKEN>'")
    return guard
