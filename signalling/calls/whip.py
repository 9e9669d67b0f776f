"""WHIP (RFC 9725) and WHEP: publish into and watch a session with one HTTP offer/answer.

``POST /whip/{session}`` carries a client's SDP offer for a publish transport and
``POST /whep/{session}`` one for a subscribe transport (the client offers recvonly media). Both
answer ``201 Created`` with the SDP answer, a ``Location`` naming the new resource and the ICE
servers as ``Link: <...>; rel="ice-server"`` headers; ``DELETE`` on the resource stops it. Any
standard client (OBS, GStreamer, a browser) can do this.

Every WHIP/WHEP resource is a participant of its own in the media plane, so one token may hold
several (a broadcaster's camera and a monitor view), but one WHIP publish per session: a new
WHIP ``POST`` by the same user into the same session replaces that user's earlier one (an
encoder that reconnected without DELETE): the old resource goes, and its WHEP viewers are moved
to the new tracks. Trickle ICE and ICE restarts over ``PATCH``
are not supported (405): the answer carries every server candidate and clients gather theirs
before posting, which standard clients do when PATCH is refused.

The handlers reach the media plane only through ``sfu.api`` requests on ``app[MEDIA_PLANE]``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from aiohttp import web

from sfu.api import (
    Answer,
    Leave,
    MediaError,
    MediaPlane,
    Message,
    Offer,
    OpenRoom,
    RoomClosed,
    RoomRestarted,
    TransportClosed,
    TransportKind,
)

from ..auth.tokens import TOKENS, AuthError, Identity, Role, authenticate, bearer_token
from ..core import keys
from ..core.errors import error_body
from ..core.limits import LimitReached, read_limited
from . import ice
from .grants import AdminOnlyGrants, SessionGrants
from .node import MEDIA_PLANE

log = logging.getLogger(__name__)

SDP = "application/sdp"
SESSION_PATTERN = r"[A-Za-z0-9_-]{1,64}"
RESOURCE_PATTERN = r"[0-9a-f]{32}"

# MediaError codes that mean "your request is wrong" (400); the rest are the media plane's own
# trouble (503), so a client knows whether retrying the same offer can help.
_CLIENT_ERRORS = {"bad_sdp", "unsupported_codec", "bundle_required", "bad_candidate", "bad_message"}
_ENDPOINTS: dict[str, TransportKind] = {"whip": "publish", "whep": "subscribe"}


@dataclass(frozen=True)
class WhipResource:
    endpoint: str  # "whip" or "whep"
    session_id: str
    resource_id: str
    participant_id: str
    owner: str  # user id of the token that created it

    @property
    def location(self) -> str:
        return f"/{self.endpoint}/{self.session_id}/{self.resource_id}"


class WhipResources:
    """The live WHIP/WHEP resources of this node; a resource goes when its transport closes."""

    def __init__(self) -> None:
        self._by_participant: dict[tuple[str, str], WhipResource] = {}

    def add(self, resource: WhipResource) -> None:
        self._by_participant[(resource.session_id, resource.participant_id)] = resource

    def reserve(self, resource: WhipResource, per_owner: int, per_session: int,
                replacing: WhipResource | None = None) -> None:
        """Hold a place for ``resource`` while the media plane answers (so that a burst of posts
        cannot all pass the count before the first lands), or raise ``LimitReached``.
        ``replacing``: a resource that goes once this one is up, so not counted."""
        in_session = [r for r in self._by_participant.values()
                      if r.session_id == resource.session_id and r is not replacing]
        if sum(r.owner == resource.owner for r in in_session) >= per_owner:
            raise LimitReached(429, "too_many_resources",
                               f"at most {per_owner} WHIP/WHEP resources per participant and session: DELETE one first")
        if len(in_session) >= per_session:
            raise LimitReached(429, "too_many_resources", f"at most {per_session} WHIP/WHEP resources per session")
        self.add(resource)

    def publish_of(self, session_id: str, owner: str) -> WhipResource | None:
        """``owner``'s WHIP resource in the session, if it has one."""
        return next((r for r in self._by_participant.values() if r.endpoint == "whip"
                     and r.session_id == session_id and r.owner == owner), None)

    def get(self, endpoint: str, session_id: str, resource_id: str) -> WhipResource | None:
        resource = self._by_participant.get((session_id, f"{endpoint}-{resource_id}"))
        return resource if resource is not None and resource.endpoint == endpoint else None

    def remove(self, resource: WhipResource) -> None:
        self._by_participant.pop((resource.session_id, resource.participant_id), None)

    def __len__(self) -> int:
        return len(self._by_participant)

    async def on_media_event(self, event: Message) -> None:
        if isinstance(event, TransportClosed):
            self._by_participant.pop((event.room_id, event.participant_id), None)
        elif isinstance(event, (RoomClosed, RoomRestarted)):  # a restarted room has no transports
            for key in [k for k in self._by_participant if k[0] == event.room_id]:
                del self._by_participant[key]


# The WHIP/WHEP resources this node serves.
WHIP_RESOURCES = web.AppKey("whip_resources", WhipResources)


def setup_whip(app: web.Application, grants: SessionGrants | None = None) -> None:
    """Add the WHIP/WHEP routes. Set ``app[MEDIA_PLANE]`` before start-up; without a media plane
    the endpoints answer 503."""
    app[SESSION_GRANTS] = grants or AdminOnlyGrants()
    app[WHIP_RESOURCES] = WhipResources()
    for endpoint in _ENDPOINTS:
        base = f"/{endpoint}/{{session:{SESSION_PATTERN}}}"
        resource = f"{base}/{{resource:{RESOURCE_PATTERN}}}"
        app.router.add_post(base, create_resource)
        app.router.add_route("OPTIONS", base, options)
        app.router.add_delete(resource, delete_resource)
        app.router.add_patch(resource, patch_resource)
    app.router.add_post("/api/broadcasts", create_broadcast)
    app.on_startup.append(_listen_for_transport_close)


async def _listen_for_transport_close(app: web.Application) -> None:
    media = app.get(MEDIA_PLANE)
    if media is not None:
        media.on_event(app[WHIP_RESOURCES].on_media_event)


def _media(request: web.Request) -> MediaPlane:
    media = request.app.get(MEDIA_PLANE)
    if media is None:
        raise error(web.HTTPServiceUnavailable, "media_unavailable", "this node runs no media plane")
    return media


def error(status: type[web.HTTPException], code: str, message: str, **kwargs: object) -> web.HTTPException:
    return status(text=error_body(code, message), content_type="application/json", **kwargs)  # type: ignore[arg-type]


def add_ice_server_links(response: web.StreamResponse, request: web.Request, user_id: str) -> None:
    """RFC 9725 section 4.6: the ICE servers (TURN with a fresh credential for this user) as Links."""
    ice.add_link_headers(response, ice.ice_servers_for(request.app, user_id))


def _endpoint(request: web.Request) -> str:
    return request.path.split("/", 2)[1]


async def create_resource(request: web.Request) -> web.Response:
    endpoint = _endpoint(request)
    session_id = request.match_info["session"]
    identity = authenticate(request, request.app[TOKENS])
    grants = request.app[SESSION_GRANTS]
    allowed = grants.may_publish if endpoint == "whip" else grants.may_view
    if not allowed(identity, session_id):
        verb = "publish into" if endpoint == "whip" else "watch"
        raise error(
            web.HTTPForbidden, "forbidden",
            f"this token may not {verb} session {session_id}: WHIP/WHEP are for admins (broadcasts);"
            " a session's participants send and receive media over /ws, where it is metered",
        )
    if request.content_type != SDP:
        raise error(web.HTTPUnsupportedMediaType, "bad_content_type", f"the offer must be sent as {SDP}")
    settings = request.app[keys.SETTINGS]
    try:
        offer = (await read_limited(request, settings.max_sdp_bytes)).decode()
    except UnicodeDecodeError:
        raise error(web.HTTPBadRequest, "bad_sdp", "the offer is not UTF-8 text") from None
    if not offer.lstrip().startswith("v=0"):
        raise error(web.HTTPBadRequest, "bad_sdp", "the body is not an SDP offer (it must start with v=0)")

    resource_id = uuid.uuid4().hex
    resource = WhipResource(endpoint, session_id, resource_id, f"{endpoint}-{resource_id}", identity.user_id)
    media = _media(request)
    resources = request.app[WHIP_RESOURCES]
    # A publisher that posts again without DELETE reconnected: its new resource replaces the old.
    replacing = resources.publish_of(session_id, identity.user_id) if endpoint == "whip" else None
    if identity.is_admin:  # broadcasts and load tests: hundreds of viewers on one token
        resources.add(resource)
    else:
        try:
            resources.reserve(
                resource, settings.whip_max_resources_per_participant, settings.whip_max_resources_per_session,
                replacing,
            )
        except LimitReached as exc:
            raise exc.as_http() from None
    try:
        # Idempotent: the session store may have opened the room already; an admin's broadcast
        # or load test opens it here.
        await media.request(OpenRoom(session_id, {"opened_by": endpoint}))
        reply = await media.request(Offer(
            session_id, resource.participant_id, _ENDPOINTS[endpoint], offer,
            replaces=replacing.participant_id if replacing is not None else "",
        ))
        if not isinstance(reply, Answer):
            raise MediaError("media_unavailable", "the media plane did not answer")
    except MediaError as exc:
        resources.remove(resource)
        status = web.HTTPBadRequest if exc.code in _CLIENT_ERRORS else web.HTTPServiceUnavailable
        raise error(status, exc.code, exc.message) from None
    except BaseException:
        resources.remove(resource)
        raise
    if replacing is not None:
        resources.remove(replacing)  # gone in the media plane: a late DELETE of it finds nothing
        log.info("whip resource %s replaces %s in session %s", resource_id, replacing.resource_id, session_id)
    log.info("%s resource %s opened in session %s by %s", endpoint, resource_id, session_id, identity.user_id)
    headers = {"Location": resource.location, "ETag": f'"{resource_id}"'}
    response = web.Response(status=201, text=reply.sdp, content_type=SDP, headers=headers)
    add_ice_server_links(response, request, identity.user_id)
    return response


async def delete_resource(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS])
    resource = _find(request, identity)
    request.app[WHIP_RESOURCES].remove(resource)
    try:
        await _media(request).request(Leave(resource.session_id, resource.participant_id))
    except MediaError as exc:
        # Already gone in the media plane: the client's intent (stop) holds.
        log.info("leave of %s: %s", resource.location, exc.message)
    return web.Response(status=200)


async def patch_resource(request: web.Request) -> web.Response:
    identity = authenticate(request, request.app[TOKENS])
    _find(request, identity)
    raise error(web.HTTPMethodNotAllowed, "trickle_unsupported",
                "trickle ICE and ICE restarts over PATCH are not supported: put every candidate in the offer",
                method="PATCH", allowed_methods=["DELETE"])


async def options(request: web.Request) -> web.Response:
    response = web.Response(status=204, headers={"Allow": "POST, OPTIONS", "Accept-Post": SDP})
    # TURN credentials only go to a caller with a valid token; an anonymous pre-flight gets none.
    try:
        identity = request.app[TOKENS].verify(bearer_token(request))
    except AuthError:
        return response
    add_ice_server_links(response, request, identity.user_id)
    return response


def _find(request: web.Request, identity: Identity) -> WhipResource:
    resource = request.app[WHIP_RESOURCES].get(
        _endpoint(request), request.match_info["session"], request.match_info["resource"]
    )
    # Someone else's resource is reported as unknown: its URL is not a secret to probe for.
    if resource is None or not (identity.is_admin or identity.user_id == resource.owner):
        raise error(web.HTTPNotFound, "unknown_resource", "no such WHIP/WHEP resource")
    return resource


async def create_broadcast(request: web.Request) -> web.Response:
    """An admin opens a session for a broadcast or a load test: ``201`` with its WHIP/WHEP URLs."""
    authenticate(request, request.app[TOKENS], Role.ADMIN)
    session_id = f"bc-{uuid.uuid4().hex}"
    try:
        await _media(request).request(OpenRoom(session_id, {"broadcast": True}))
    except MediaError as exc:
        raise error(web.HTTPServiceUnavailable, exc.code, exc.message) from None
    body = {"session_id": session_id, "whip": f"/whip/{session_id}", "whep": f"/whep/{session_id}"}
    return web.json_response(body, status=201, headers={"Location": f"/whip/{session_id}"})


# Who may publish into or watch a session over WHIP/WHEP (admins only by default).
SESSION_GRANTS = web.AppKey("session_grants", SessionGrants)
