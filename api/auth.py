"""The API key that guards the endpoints which change what the feed carries."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import HTTPException, Security
from fastapi.security import APIKeyHeader

from api.context import Context

_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Must equal TICKVAULT_API_KEY; without one configured, changes are refused.",
)


def require_api_key(context: Context, given: Annotated[str | None, Security(_header)]) -> None:
    """403 while no key is configured (never open by default), 401 for a missing or wrong one."""
    expected = context.settings.api_key
    if not expected:
        raise HTTPException(
            status_code=403,
            detail="subscription changes are disabled: set TICKVAULT_API_KEY to enable them",
        )
    # Bytes: compare_digest refuses str with non-ASCII characters, which a header can carry.
    if given is None or not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong X-API-Key header",
            headers={"WWW-Authenticate": "ApiKey"},
        )
