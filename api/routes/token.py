"""A new Upstox access token for the ingest, without a restart and without a shell.

The API and the ingest may be two processes; the token goes where `tickvault token set`
puts it, the data directory's token file, which the ingest follows when it started on it
(ingest/tokens.py). The answer's note says what the ingest will do, from its status: an
ingest on the simulator or on UPSTOX_ACCESS_TOKEN does not take it until restarted.

The body is read here rather than by a pydantic model: FastAPI's 422 quotes the input it
refused, and a body of the wrong shape would come back with the token in it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.auth import API_KEY
from api.context import ApiContext, Context
from api.error_responses import responses
from api.ingest_state import StatusNotPublished
from core.ist import IST
from ingest.channels.latest_table import IngestNotRunning, SlotBusy
from ingest.tokens import ENV_WINS, KINDS, save_token, what_the_ingest_does

router = APIRouter(prefix="/api/v1", tags=["token"])


class TokenIn(BaseModel):
    access_token: str = Field(min_length=1, description="never echoed, logged or returned")
    kind: Literal["analytics", "daily"] = "analytics"


class TokenOut(BaseModel):
    source: Literal["file"]
    kind: Literal["analytics", "daily"]
    saved_at: str
    expires_at: str | None  # a daily token's 03:30 IST
    note: str


@router.post(
    "/token",
    response_model=TokenOut,
    dependencies=[API_KEY],
    responses=responses(400, 401, 403, 409, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TokenIn.model_json_schema()}},
        }
    },
)
async def set_token(request: Request, context: Context) -> TokenOut:
    """Store a new access token (a daily one ends at 03:30 IST). An ingest that started on
    the stored token takes it within a second, re-authorizes and resumes; the note says
    whether the running one will. 409 while UPSTOX_ACCESS_TOKEN is set here: it would win."""
    if context.settings.upstox_access_token:
        raise HTTPException(status_code=409, detail=ENV_WINS)
    token, kind = _token_and_kind(await request.body())
    try:
        stored = await run_in_threadpool(save_token, context.settings.data_dir, token, kind)
    except ValueError as error:  # the message never quotes the token
        raise HTTPException(status_code=422, detail=str(error)) from None
    return TokenOut(
        source="file",
        kind=kind,
        saved_at=stored.saved_at.isoformat(),
        expires_at=stored.expires_at.astimezone(IST).isoformat() if stored.expires_at else None,
        note=await run_in_threadpool(_note, context),
    )


def _note(context: ApiContext) -> str:
    """What the ingest will do with the token, from its status."""
    see = "see GET /api/v1/websocket/status"
    try:
        source = _ingest_token_source(context)
    except (StatusNotPublished, SlotBusy):
        return f"the ingest's status cannot be read now (it may be starting): {see}"
    return f"{what_the_ingest_does(source)}; {see}"


def _ingest_token_source(context: ApiContext) -> str | None:
    """Where the running ingest's token comes from, None when no ingest runs;
    StatusNotPublished or SlotBusy when that cannot be told now."""
    try:
        token = context.published.status().token
    except IngestNotRunning:
        return None
    if token is None:
        raise StatusNotPublished("the ingest is starting")
    return token.source


def _token_and_kind(body: bytes) -> tuple[str, Any]:
    """The body's token and kind, with errors that name the field and never quote a value."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(status_code=400, detail="the body is not JSON") from None
    if not isinstance(payload, dict) or set(payload) - {"access_token", "kind"}:
        raise HTTPException(
            status_code=422, detail='the body must be {"access_token": "...", "kind": "..."}'
        )
    token, kind = payload.get("access_token"), payload.get("kind", "analytics")
    if not isinstance(token, str):
        raise HTTPException(status_code=422, detail="access_token must be a string")
    if kind not in KINDS:
        raise HTTPException(status_code=422, detail=f"kind must be one of {', '.join(KINDS)}")
    return token, kind
