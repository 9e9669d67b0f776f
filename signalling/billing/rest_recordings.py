"""REST for recordings: a session's files, their download (HTTP range requests) and deletion.

Only a session's participants and admins see its recordings (403 for anyone else, 404 for what
does not exist); only admins delete. A file is named by its id from the index, never by a path:
what is served is the row's file under this node's recordings directory, so no request can reach
another file. A file another node holds is not proxied: the answer (409
``recording_on_other_node``) names that node, whose own API serves it.
"""

from __future__ import annotations

from aiohttp import web

from ..auth.tokens import TOKENS, Identity, authenticate
from ..calls.node import SIGNALLING
from ..core.errors import ApiError
from .recording_archive import RECORDING_STORE
from .recordings import RecordingRow


def setup(app: web.Application) -> None:
    app.router.add_get("/api/sessions/{session_id}/recordings", session_recordings)
    app.router.add_get("/api/recordings/{file_id}", recording)
    app.router.add_get("/api/recordings/{file_id}/file", recording_file)
    app.router.add_delete("/api/recordings/{file_id}", delete_recording)


async def session_recordings(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS])
    session_id = request.match_info["session_id"]
    parties = await request.app[SIGNALLING].session_parties(session_id)
    if parties is None:
        raise ApiError("session_not_found", f"there is no session {session_id!r}", status=404).as_http()
    if not identity.is_admin and identity.user_id not in parties[:2]:
        raise ApiError("forbidden", "only the session's participants see its recordings", status=403).as_http()
    rows = await request.app[RECORDING_STORE].index.of_session(session_id)
    return web.json_response({"session_id": session_id, "recordings": [r.public() for r in rows]})


async def _row(request: web.Request, identity: Identity) -> RecordingRow:
    file_id = request.match_info["file_id"]
    row = await request.app[RECORDING_STORE].index.get(file_id)
    if row is None or row.deleted_at is not None:
        raise ApiError("recording_not_found", f"there is no recording {file_id!r}", status=404).as_http()
    if not identity.is_admin and identity.user_id not in (row.expert_id, row.client_id):
        raise ApiError("forbidden", "only the session's participants see its recordings", status=403).as_http()
    return row


async def recording(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS])
    return web.json_response((await _row(request, identity)).public())


async def recording_file(request: web.Request) -> web.StreamResponse:
    identity = authenticate(request, request.app[TOKENS])
    row = await _row(request, identity)
    path = request.app[RECORDING_STORE].path_of(row)
    if path is None:
        raise ApiError("recording_on_other_node",
                       f"recording {row.id} is held by node {row.node!r}: download it from that node",
                       status=409).as_http()
    if not path.is_file():
        raise ApiError("recording_not_found", f"the file of recording {row.id} is gone", status=404).as_http()
    content_type = "video/webm" if path.suffix == ".webm" else "video/x-matroska"
    # aiohttp's FileResponse answers Range (206, 416) and If-Range itself.
    return web.FileResponse(path, headers={
        "Content-Type": content_type,
        "Content-Disposition": f'attachment; filename="{row.id}{path.suffix}"',
        "Cache-Control": "private, no-store",
    })


async def delete_recording(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS])
    if not identity.is_admin:
        raise ApiError("forbidden", "only admins delete recordings", status=403).as_http()
    row = await _row(request, identity)
    archive = request.app[RECORDING_STORE]
    if archive.path_of(row) is None:
        raise ApiError("recording_on_other_node",
                       f"recording {row.id} is held by node {row.node!r}: delete it there",
                       status=409).as_http()
    await archive.delete(row, identity.user_id, "admin")
    return web.Response(status=204)
