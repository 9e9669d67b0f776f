"""A transport: one participant's peer connection in one direction.

``publish``: the client offers its tracks; each sending m-line becomes a producer. ``subscribe``:
the SFU offers the other participants' tracks (a consumer per m-line) and renegotiates as
producers come and go; when the client offers instead (WHEP), the SFU fills the client's recvonly
m-lines with the room's tracks. aiortc keeps SDP, ICE, DTLS and SRTP; packets go through
sfu.aiortc_hooks to our producers and consumers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiortc import (
    RTCBundlePolicy,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import (
    sdp as aiortc_sdp,
)
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters

from sfu import aiortc_hooks, congestion, ingress, rtcp
from sfu.api import MediaError, TransportKind
from sfu.consumer import Consumer
from sfu.forwarder import (
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    ExtensionLayout,
    find_extension,
    payload_offset,
    unpack_fixed,
)
from sfu.network import NetworkOptions
from sfu.options import MediaOptions
from sfu.producer import Codec, Producer

logger = logging.getLogger(__name__)

SUPPORTED_CODECS = {"audio/opus", "video/vp8", "video/h264"}
MAX_SDP_BYTES = 64 * 1024
MAX_CHAT_BYTES = 4096
SSRC_SWITCH_MS = 1000  # a new SSRC on an m-line replaces the old one only after this silence
MAX_MEDIA_SECTIONS = 16  # per connection: bounds what one client can make every other renegotiate

PacketHandler = Callable[[bytes, int, int, int, int, int, int], None]


def bundle_only(sdp: str) -> list[bool]:
    """Per m-line: does it carry ``a=bundle-only`` (RFC 9143)? aiortc's parser drops it."""
    return ["\na=bundle-only" in section.replace("\r\n", "\n")
            for section in sdp.split("\nm=")[1:]]


def in_use(description: aiortc_sdp.SessionDescription, sdp: str) -> list[bool]:
    """Per m-line: not rejected. Port 0 rejects an m-line (RFC 3264) unless it is bundle-only
    (RFC 9143: its media rides on the BUNDLE's transport, as webrtcbin offers audio)."""
    only = bundle_only(sdp)
    return [media.port != 0 or (i < len(only) and only[i])
            for i, media in enumerate(description.media)]


def parse_sdp(sdp: str, expected: str,
              max_sections: int = MAX_MEDIA_SECTIONS) -> aiortc_sdp.SessionDescription:
    """Validate an SDP before aiortc sees it: a clear ``bad_sdp`` instead of an exception.
    ``max_sections``: the most m-lines allowed (a client's offer is bounded; an answer to one of
    our offers has as many m-lines as that offer)."""
    if not isinstance(sdp, str) or not sdp.strip() or len(sdp) > MAX_SDP_BYTES:
        raise MediaError("bad_sdp", "the SDP is empty or too large")
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise MediaError("bad_sdp", f"the SDP {expected} could not be parsed: {exc}") from exc
    if not description.media:
        raise MediaError("bad_sdp", f"the SDP {expected} has no media sections")
    for media in description.media:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise MediaError("bad_sdp", "the SDP lacks ICE credentials")
        if media.dtls is None or not media.dtls.fingerprints:
            raise MediaError("bad_sdp", "the SDP lacks a DTLS fingerprint")
        if media.kind in ("audio", "video") and not media.rtcp_mux:
            raise MediaError("bad_sdp", "rtcp-mux is required")
    if len(description.media) > max_sections:
        raise MediaError("too_many_tracks", f"at most {max_sections} media sections")
    # A rejected m-line leaves the BUNDLE group (RFC 8843 7.3.3): only the others must be in it.
    used = {m.rtp.muxId for m, ok in zip(description.media, in_use(description, sdp)) if ok}
    if len(used) > 1 and not any(
        g.semantic == "BUNDLE" and used <= set(g.items) for g in description.group
    ):
        raise MediaError("bundle_required", "every media section must be in one BUNDLE group")
    return description


def _codec(codecs: list[RTCRtpCodecParameters]) -> tuple[list[RTCRtpCodecParameters], Codec] | None:
    """The first supported codec of a negotiated list, with its RTX, as (kept, Codec)."""
    for codec in codecs:
        if codec.mimeType.lower() not in SUPPORTED_CODECS or codec.payloadType is None:
            continue
        rtx = next(
            (c for c in codecs if c.mimeType.lower().endswith("/rtx")
             and c.parameters.get("apt") == codec.payloadType), None,
        )
        feedback = {(f.type, f.parameter) for f in codec.rtcpFeedback}
        kept = [codec] + ([rtx] if rtx else [])
        return kept, Codec(
            mime_type=codec.mimeType, clock_rate=codec.clockRate,
            payload_type=codec.payloadType,
            rtx_payload_type=rtx.payloadType if rtx else None,
            channels=codec.channels, parameters=dict(codec.parameters),
            nack=("nack", None) in feedback, pli=("nack", "pli") in feedback,
            remb=("goog-remb", None) in feedback,
        )
    return None


def _h264_key(parameters: dict[str, Any]) -> tuple[str, str]:
    """(packetization-mode, profile-level-id): the packetization mode must agree between a
    publisher's H.264 and a subscriber's; the closer the profile, the better."""
    return (str(parameters.get("packetization-mode", "0")),
            str(parameters.get("profile-level-id", "42001f")).lower())


def _matching(codecs: list[Any], codec: Codec) -> Any:
    """The first of ``codecs`` (RTCRtpCodecParameters or capabilities) that carries ``codec``'s
    packets as they are: same MIME type; for H.264 the same packetization mode, and the same
    profile-level-id, else the same profile and constraints, else the same profile_idc."""
    same = [c for c in codecs if c.mimeType.lower() == codec.mime_type.lower()]
    if codec.name != "h264":
        return same[0] if same else None
    mode, profile = _h264_key(codec.parameters)
    fitting = [(p, c) for c in same for m, p in [_h264_key(c.parameters)] if m == mode]
    for digits in (6, 4, 2):
        for candidate_profile, candidate in fitting:
            if candidate_profile[:digits] == profile[:digits]:
                return candidate
    return None


def _declare_parameter_sets(sdp: str, consumers: dict[int, Consumer]) -> str:
    """Our offer with each H.264 track's out-of-band parameter sets (``sprop-parameter-sets``,
    RFC 6184 8.1) in the fmtp of the m-line that sends it (found by its SSRC): aiortc writes
    our offers' fmtp from its capabilities, and a subscriber's decoder may need the publisher's
    SPS/PPS before the first in-band ones."""
    if not any("sprop-parameter-sets" in c.producer.codec.parameters for c in consumers.values()):
        return sdp
    description = aiortc_sdp.SessionDescription.parse(sdp)
    for media in description.media:
        consumer = next((consumers[s.ssrc] for s in media.ssrc if s.ssrc in consumers), None)
        sprop = consumer.producer.codec.parameters.get("sprop-parameter-sets") if consumer else None
        if sprop is None:
            continue
        for codec in media.rtp.codecs:
            if codec.mimeType.lower() == "video/h264":
                codec.parameters = {**codec.parameters, "sprop-parameter-sets": sprop}
    return str(description)


def _extension_id(extensions: list[Any], uri: str) -> int:
    return next((e.id for e in extensions if e.uri == uri), 0)


class TransportListener(Protocol):
    """What a transport asks of the room it belongs to (mediasoup's transport listener): the
    ``Router`` implements it, and the transport never imports the router."""

    id: str
    network: NetworkOptions
    options: MediaOptions

    def now_ms(self) -> int:
        """The clock packet arrivals are stamped with."""
        ...

    def create_producer(self, participant_id: str, mid: str, kind: str, codec: Codec) -> Producer[Consumer]:
        """A producer for a track the participant publishes."""
        ...

    def producers_for(self, participant_id: str) -> list[Producer[Consumer]]:
        """The tracks a participant may receive: everyone's but its own."""
        ...

    def schedule_offer(self, transport: Transport) -> None:
        """Send the transport's participant a new server offer (its tracks changed)."""
        ...

    def relay_chat(self, sender: str, message: str) -> None:
        """Pass a data-channel chat message on to the room."""
        ...

    def connection_closed(self, transport: Transport) -> None:
        """The transport's connection closed for good: the transport leaves the room."""
        ...

    def transport_state_changed(self, transport: Transport) -> None:
        """The transport's connection state changed: the participant's media state follows."""
        ...


# With sfu/_ingress.c built, ``_rtp`` and ``last_packet_ms`` are C members of this base class:
# the reader looks the handler up and stamps the packet's arrival with no attribute lookup.
if TYPE_CHECKING or ingress.TransportBase is None:
    _Base = object
else:
    _Base = ingress.TransportBase


class Transport(_Base):
    # No per-instance __dict__ (as Consumer and Producer); those the C base already has are left
    # out (a slot of the same name would hide its member from the C reader).
    __slots__ = tuple(name for name in (
        "router", "participant_id", "kind", "closed", "client_offers", "state", "last_packet_ms",
        "offer_id", "producers", "consumers", "chat", "_rtp", "_rtcp_consumers", "_mid_ext_id",
        "_rtx_pts", "_pts", "_remote_ufrag", "_renegotiate", "_lock", "_unconfigured",
        "_waiting", "_last_on", "pc", "_raw", "_heard_at_connect", "_dtls_released", "offers_chat",
        "_compact_due",
    ) if not hasattr(_Base, name))

    def __init__(self, router: TransportListener, participant_id: str, kind: TransportKind) -> None:
        self.router = router
        self.participant_id = participant_id
        self.kind: TransportKind = kind
        self.closed = False
        self.client_offers = kind == "publish"  # flips to True for WHEP
        self.state = "new"
        self.last_packet_ms = 0
        self.offer_id = 0
        self.producers: dict[str, Producer[Consumer]] = {}  # by the client's mid
        self.consumers: dict[str, Consumer] = {}  # by our mid (or by producer id until known)
        self.chat: RTCDataChannel | None = None
        self.offers_chat = True  # our own offers open a "chat" data channel (sfu.api.Subscribe)
        self._rtp: dict[int, PacketHandler] = {}
        self._rtcp_consumers: dict[int, Consumer] = {}
        self._mid_ext_id = 0
        self._rtx_pts: dict[int, Producer[Consumer] | None] = {}
        self._pts: dict[int, Producer[Consumer] | None] = {}
        self._remote_ufrag: str | None = None
        self._renegotiate = False
        self._lock = asyncio.Lock()
        self._unconfigured: list[tuple[RTCRtpTransceiver, Consumer]] = []
        self._waiting: list[RTCRtpTransceiver] = []  # WHEP m-lines answered before their track
        self._last_on: dict[RTCRtpTransceiver, Consumer] = {}  # a waiting m-line's last consumer
        self.pc = self._new_pc()
        self._raw: aiortc_hooks.RawSender | None = None
        self._heard_at_connect = 0  # last_packet_ms when the connection last became connected
        self._dtls_released: RTCPeerConnection | None = None  # the pc whose DTLS release_dtls freed
        self._compact_due = False  # _compact is scheduled

    def _new_pc(self) -> RTCPeerConnection:
        configuration = self.router.network.configuration()
        configuration.bundlePolicy = RTCBundlePolicy.MAX_BUNDLE
        pc = RTCPeerConnection(configuration)
        aiortc_hooks.share_dtls_certificate(pc)
        aiortc_hooks.accept_rsa_dtls_peers(pc)
        pc.on("connectionstatechange", lambda: self._on_state(pc))
        pc.on("datachannel", self._on_datachannel)
        return pc

    # --- negotiation -------------------------------------------------------------------------

    async def handle_offer(self, sdp: str) -> str:
        """A client's offer (publish, or WHEP on subscribe); returns our answer."""
        description = parse_sdp(sdp, "offer")
        async with self._lock:
            if self.closed:
                raise MediaError("transport_closed", "the transport is closed")
            if self.kind == "subscribe" and self.offer_id:
                raise MediaError("bad_state", "the SFU offers on this subscribe transport: "
                                 "answer its ServerOffer, or Leave it before offering (WHEP)")
            ufrag = description.media[0].ice.usernameFragment  # type: ignore[union-attr]
            if self._remote_ufrag is not None and ufrag != self._remote_ufrag:
                if self.kind == "subscribe":
                    raise MediaError("bad_state", "a client-offered subscribe transport cannot "
                                     "restart ICE: Leave it and offer a new one")
                await self._restart_ice()
            if (self._dtls_released is self.pc and self.pc.sctp is None
                    and any(m.kind == "application" for m in description.media)):
                raise MediaError("bad_state", "this connection's DTLS carries no data channel: "
                                 "offer one in a connection's first offer (or restart ICE)")
            self._remote_ufrag = ufrag
            self.client_offers = True
            await self._set_remote(sdp, "offer")
            if self.kind == "publish":
                self._sync_producers(description, in_use(description, sdp))
            else:
                self._fill_whep(description)
            self._hook()
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
            self._hook()
            self._configure_consumers()
            answer_sdp = self.pc.localDescription.sdp
            self._negotiated()
            return answer_sdp

    def _negotiated(self) -> None:
        """A negotiation ended: its descriptions kept as text till the next, and the parameters
        it left on the transceivers shared with every other connection's."""
        aiortc_hooks.compact_descriptions(self.pc)
        aiortc_hooks.share_negotiated_parameters(self.pc)

    async def _set_remote(self, sdp: str, kind: str) -> None:
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except OperationError as exc:
            raise MediaError("unsupported_codec", f"no codec in common: {exc}") from exc
        except InvalidStateError as exc:
            raise MediaError("bad_state", f"cannot apply this {kind} now: {exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MediaError("bad_sdp", f"the SDP {kind} was refused: {exc}") from exc

    async def _restart_ice(self) -> None:
        """aiortc cannot restart ICE on a live connection, so a resume gets a fresh one; the
        producers stay, and re-attach (new epoch) once the new connection delivers media."""
        logger.info("room %s: %s publish transport resumes on a new connection",
                    self.router.id, self.participant_id)
        old = self.pc
        for producer in self.producers.values():
            producer.detach_source()
        self._rtp.clear()
        self._raw = None
        self.chat = None  # the client opens its chat channel again on the new connection
        self.pc = self._new_pc()
        self.state = "new"
        await old.close()

    def _sync_producers(self, description: aiortc_sdp.SessionDescription,
                        used: list[bool]) -> None:
        sending = {}
        for media, ok in zip(description.media, used):
            if media.kind in ("audio", "video") and media.direction in ("sendonly", "sendrecv") \
                    and ok:
                sending[media.rtp.muxId] = media
        for gone in [m for m in self.producers if m not in sending]:
            self.producers.pop(gone).close()
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            if mid is None or mid not in sending:
                continue
            picked = _codec(aiortc_hooks.negotiated_codecs(transceiver))
            if picked is None:
                raise MediaError("unsupported_codec",
                                 f"m-line {mid}: none of opus, VP8, H.264 was offered")
            kept, codec = picked
            # aiortc keeps our own fmtp for a negotiated codec: the publisher's out-of-band
            # H.264 parameter sets come from its SDP
            remote = next((c for c in sending[mid].rtp.codecs
                           if c.payloadType == codec.payload_type), None)
            if remote is not None and "sprop-parameter-sets" in remote.parameters:
                codec = dataclasses.replace(codec, parameters={
                    **codec.parameters,
                    "sprop-parameter-sets": remote.parameters["sprop-parameter-sets"]})
            aiortc_hooks.restrict_codecs(transceiver, kept)
            if mid not in self.producers:
                self.producers[mid] = self.router.create_producer(
                    self.participant_id, mid, transceiver.kind, codec
                )
            aiortc_hooks.disarm_receiver(transceiver.receiver, self._attacher(mid))
            aiortc_hooks.release_transceiver_state(transceiver)

    def _attacher(self, mid: str) -> Callable[[RTCRtpReceiveParameters], None]:
        return lambda params: self._attach_producer(mid, params)

    def _attach_producer(self, mid: str, params: RTCRtpReceiveParameters) -> None:
        # aiortc parsed the remote description again for these parameters: text again once it
        # has started every receiver of the connection (within this event-loop turn), once
        if not self._compact_due:
            self._compact_due = True
            asyncio.get_running_loop().call_soon(self._compact)
        producer = self.producers.get(mid)
        if producer is None or self._raw is None:
            return
        ssrc = params.encodings[0].ssrc if params.encodings else None
        rtx = params.encodings[0].rtx if params.encodings else None
        producer.attach_source(
            ssrc, rtx.ssrc if rtx else None,
            _extension_id(params.headerExtensions, URI_AUDIO_LEVEL), self._raw.send_rtcp,
        )
        self._mid_ext_id = self._mid_ext_id or _extension_id(params.headerExtensions, URI_MID)
        if ssrc is not None:
            self._rtp[ssrc] = producer.receive
        if rtx is not None:
            self._rtp[rtx.ssrc] = producer.receive_rtx
        # Browsers reuse payload type numbers across m-lines: a type shared by two producers
        # identifies neither (None), and only the mid extension can tell them apart.
        self._pts[producer.codec.payload_type] = (
            producer if self._pts.get(producer.codec.payload_type, producer) is producer else None
        )
        rtx_pt = producer.codec.rtx_payload_type
        if rtx_pt is not None:
            self._rtx_pts[rtx_pt] = (
                producer if self._rtx_pts.get(rtx_pt, producer) is producer else None
            )

    def _compact(self) -> None:
        self._compact_due = False
        aiortc_hooks.compact_descriptions(self.pc)

    async def create_offer(self) -> tuple[str, int] | None:
        """Our (re)offer on a subscribe transport, or None while one is awaiting its answer
        (the change is then offered once that answer arrives), or while there is nothing to
        offer: no track yet and no chat (an offer without media sections cannot be answered);
        the first track's offer then opens the connection."""
        async with self._lock:
            if self.closed:
                return None
            if self.pc.signalingState != "stable":
                self._renegotiate = True
                return None
            self._renegotiate = False
            if self.chat is None and self.offers_chat:
                self._open_chat(self.pc.createDataChannel("chat"))
            if self.chat is None and not self.pc.getTransceivers():
                return None
            self._hook()
            offer = await self.pc.createOffer()
            sdp = _declare_parameter_sets(offer.sdp, self._rtcp_consumers)
            await self.pc.setLocalDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            self._hook()
            self.offer_id += 1
            return self.pc.localDescription.sdp, self.offer_id

    async def handle_answer(self, sdp: str, offer_id: int) -> bool:
        """The client's answer to our offer; True when another offer is due."""
        local = self.pc.localDescription
        offered = len(aiortc_sdp.SessionDescription.parse(local.sdp).media) if local else 0
        parse_sdp(sdp, "answer", max_sections=max(offered, 1))
        async with self._lock:
            if self.closed:
                raise MediaError("transport_closed", "the transport is closed")
            if offer_id != self.offer_id or self.pc.signalingState != "have-local-offer":
                raise MediaError("stale_offer", f"offer {offer_id} is not the one outstanding")
            await self._set_remote(sdp, "answer")
            self._hook()
            self._configure_consumers()
            self._negotiated()
            return self._renegotiate

    async def add_candidate(self, candidate: dict[str, Any] | None) -> None:
        from aiortc.sdp import candidate_from_sdp

        text = candidate.get("candidate") if isinstance(candidate, dict) else None
        if candidate is None or text == "":  # both spell end-of-candidates
            await self.pc.addIceCandidate(None)
            return
        if not isinstance(text, str):
            raise MediaError("bad_candidate", "candidate must be an RTCIceCandidateInit")
        try:
            parsed = candidate_from_sdp(text.removeprefix("candidate:"))
        except Exception as exc:  # aiortc asserts on short lines, raises ValueError on others
            raise MediaError("bad_candidate", f"unparsable candidate: {text[:80]!r}") from exc
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        try:
            await self.pc.addIceCandidate(parsed)
        except (ValueError, InvalidStateError) as exc:
            raise MediaError("bad_candidate", f"candidate refused: {exc}") from exc

    # --- consumers (subscribe side) ----------------------------------------------------------

    def add_consumer(self, producer: Producer[Consumer]) -> Consumer | None:
        """Add an m-line for ``producer`` to our next offer; on a client-offered (WHEP)
        transport, fill an m-line that waits for a track, if one fits."""
        if self.closed or self.pc.connectionState == "closed":
            return None
        if self.client_offers:
            return self._fill_waiting(producer)
        transceiver = self._free_m_line(producer.kind)
        if transceiver is None:
            transceiver = self.pc.addTransceiver(producer.kind, direction="sendonly")
        else:
            transceiver.direction = "sendonly"
            aiortc_hooks.renew_sender(transceiver.sender)
        self._prefer(transceiver, producer)
        return self._bind_consumer(transceiver, producer)

    def consumes(self, producer: Producer[Consumer]) -> bool:
        """Does one of this transport's m-lines carry ``producer``?"""
        return any(c.producer is producer for c in self.consumers.values()) \
            or any(c.producer is producer for _, c in self._unconfigured)

    def _free_m_line(self, kind: str) -> RTCRtpTransceiver | None:
        """An m-line of ``kind`` whose consumer closed and that the client has agreed is
        inactive: reused (RFC 8829 5.2.2 lets an offerer recycle it), so that the offer does not
        grow with every track that ever came and went."""
        for transceiver in self.pc.getTransceivers():  # (inactive: set so by _consumer_closed)
            if transceiver.kind == kind and transceiver.direction == "inactive" \
                    and transceiver.currentDirection == "inactive":
                return transceiver
        return None

    def _prefer(self, transceiver: RTCRtpTransceiver, producer: Producer[Consumer]) -> None:
        capabilities = RTCRtpSender.getCapabilities(producer.kind).codecs
        found = _matching(capabilities, producer.codec)
        wanted = [found] if found is not None else []
        wanted += [c for c in capabilities if c.mimeType.lower().endswith("/rtx")]
        transceiver.setCodecPreferences(wanted)

    def _bind_consumer(self, transceiver: RTCRtpTransceiver, producer: Producer[Consumer]) -> Consumer:
        ssrc, rtx_ssrc = aiortc_hooks.sender_ssrcs(transceiver.sender)
        self._hook()  # with max-bundle the one DTLS transport exists from the first m-line on
        raw = self._raw
        consumer = Consumer(
            f"{producer.id}>{self.participant_id}", producer, self.participant_id,
            ssrc=ssrc, rtx_ssrc=rtx_ssrc,
            # straight to the socket: one call less per packet and subscriber
            send_rtp=raw.send_rtp if raw is not None else self._send_rtp,
            send_rtcp=raw.send_rtcp if raw is not None else self._send_rtcp,
            congestion=self.router.options.congestion,
        )
        consumer.fast_sender = raw
        self._rtcp_consumers[ssrc] = consumer
        self._unconfigured.append((transceiver, consumer))
        consumer.on_close.append(lambda c, reason: self._consumer_closed(c, transceiver))
        # aiortc calls sender.send() only if DTLS is already up when an answer lands; a
        # renegotiation during the handshake would leave the m-line silent. So the consumer is
        # configured from the negotiated SDP (_configure_consumers) and the sender only disarmed.
        aiortc_hooks.disarm_sender(transceiver.sender)
        aiortc_hooks.release_transceiver_state(transceiver)
        producer.add_consumer(consumer)
        return consumer

    def _configure_consumers(self) -> None:
        """After a negotiation: give each newly negotiated consumer its payload types and header
        extension ids, and start it if the connection is up (else when it comes up)."""
        pending = []
        for transceiver, consumer in self._unconfigured:
            if consumer.closed:
                continue
            if transceiver.currentDirection not in ("sendonly", "sendrecv"):
                pending.append((transceiver, consumer))
                continue
            codecs = aiortc_hooks.negotiated_codecs(transceiver)
            main = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
            if main is None or main.payloadType is None:
                continue
            rtx = next((c for c in codecs if c.mimeType.lower().endswith("/rtx")
                        and c.parameters.get("apt") == main.payloadType), None)
            headers = aiortc_hooks.negotiated_header_extensions(transceiver)
            consumer.configure(main.payloadType, rtx.payloadType if rtx else None, ExtensionLayout(
                mid_id=_extension_id(headers, URI_MID), mid=transceiver.mid or "",
                abs_send_time_id=_extension_id(headers, URI_ABS_SEND_TIME),
                audio_level_id=_extension_id(headers, URI_AUDIO_LEVEL),
            ), nack=any(f.type == "nack" and not f.parameter for f in main.rtcpFeedback))
            self.consumers[transceiver.mid or consumer.id] = consumer
            if self.connected:
                consumer.resume()
        self._unconfigured = pending

    def _consumer_closed(self, consumer: Consumer, transceiver: RTCRtpTransceiver) -> None:
        self._rtcp_consumers.pop(consumer.ssrc, None)
        for key, value in list(self.consumers.items()):
            if value is consumer:
                del self.consumers[key]
        if self.closed:
            return
        if self.client_offers:
            self._waiting.append(transceiver)  # for the next track that fits
            self._last_on[transceiver] = consumer
        else:
            transceiver.direction = "inactive"
            self.router.schedule_offer(self)

    def _fill_whep(self, description: aiortc_sdp.SessionDescription) -> None:
        """WHEP: give each of the client's recvonly m-lines one of the room's tracks, with the
        one codec (and its RTX) that track is sent in. An m-line no track fits yet is answered
        sendonly with the client's first codec we support, and waits for a track (a viewer may
        come before the publisher: WHEP has no way to offer it later)."""
        taken = {c.producer.id for c in self.consumers.values()}
        taken |= {c.producer.id for _, c in self._unconfigured}
        for transceiver in self.pc.getTransceivers():
            if transceiver.direction == "sendonly" or transceiver in self._waiting:
                continue
            codecs = aiortc_hooks.negotiated_codecs(transceiver)
            producer, kept = None, None
            for candidate in self.router.producers_for(self.participant_id):
                if candidate.kind == transceiver.kind and candidate.id not in taken:
                    kept = _matching(codecs, candidate.codec)
                    if kept is not None:
                        producer = candidate
                        break
            if kept is None:
                kept = next((c for c in codecs if c.mimeType.lower() in SUPPORTED_CODECS), None)
                if kept is None:
                    continue
            elif producer is not None and "sprop-parameter-sets" in producer.codec.parameters:
                # H.264 out of band parameter sets: the viewer's decoder may need them before
                # the first in-band SPS/PPS (RFC 6184 8.1)
                sprop = producer.codec.parameters["sprop-parameter-sets"]
                kept = dataclasses.replace(
                    kept, parameters={**kept.parameters, "sprop-parameter-sets": sprop})
            rtx = [c for c in codecs if c.mimeType.lower().endswith("/rtx")
                   and c.parameters.get("apt") == kept.payloadType]
            aiortc_hooks.restrict_codecs(transceiver, [kept] + rtx)
            transceiver.direction = "sendonly"
            if producer is None:
                self._waiting.append(transceiver)
            else:
                taken.add(producer.id)
                self._bind_consumer(transceiver, producer)

    def _fill_waiting(self, producer: Producer[Consumer]) -> Consumer | None:
        """A track arrived: put it on a WHEP m-line that waits for one and whose codec fits."""
        for transceiver in self._waiting:
            codecs = aiortc_hooks.negotiated_codecs(transceiver)
            if transceiver.kind == producer.kind and _matching(codecs, producer.codec):
                self._waiting.remove(transceiver)
                consumer = self._bind_consumer(transceiver, producer)
                previous = self._last_on.pop(transceiver, None)
                if previous is not None:
                    consumer.continue_from(previous)
                self._configure_consumers()
                return consumer
        return None

    # --- packets -----------------------------------------------------------------------------

    def _hook(self) -> None:
        self.router.network.prepare(self.pc)
        aiortc_hooks.intercept_packets(self.pc, self._on_rtp, self._on_rtcp, self._receive_rtp,
                                       self._receive_rtcp)
        transports = aiortc_hooks.dtls_transports(self.pc)
        if self._raw is None and transports:
            self._raw = aiortc_hooks.RawSender(transports[0])

    def _send_rtp(self, data: bytes) -> bool:
        raw = self._raw
        return raw is not None and raw.send_rtp(data)

    def _send_rtcp(self, data: bytes) -> bool:
        raw = self._raw
        return raw is not None and raw.send_rtcp(data)

    async def _on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        self._receive_rtp(data, arrival_time_ms)

    def _receive_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        """Decrypted RTP, mostly straight from the socket's datagram callback. On a shared
        socket read in C (sfu/_ingress.c) this is done there for an SSRC in ``_rtp``: the same
        checks, the same handler call."""
        if len(data) < 12:
            return
        offset = payload_offset(data)
        if offset < 0:
            return
        b0, b1, seq, ts, ssrc = unpack_fixed(data)
        handler = self._rtp.get(ssrc)
        if handler is None:
            handler = self._learn(data, ssrc, b1 & 0x7F, arrival_time_ms)
            if handler is None:
                return
        self.last_packet_ms = arrival_time_ms
        handler(data, b0, b1, seq, ts, offset, arrival_time_ms)

    def _learn(self, data: bytes, ssrc: int, pt: int, arrival_ms: int) -> PacketHandler | None:
        """An SSRC the SDP did not announce (browsers' simulcast, or a changed SSRC): map it by
        its mid header extension, else by its payload type when that is unambiguous."""
        if self.kind != "publish" or len(self._rtp) > 64:
            return None
        producer = None
        if self._mid_ext_id:
            mid = find_extension(data, self._mid_ext_id)
            if mid is not None:
                producer = self.producers.get(mid.decode("ascii", "replace"))
        if producer is None:
            producer = self._rtx_pts.get(pt) if pt in self._rtx_pts else self._pts.get(pt)
        if producer is None or self._raw is None:
            return None
        if pt == producer.codec.rtx_payload_type:
            handler = producer.receive_rtx
        else:
            if producer.ssrc not in (None, ssrc):
                if arrival_ms - producer.last_arrival_ms < SSRC_SWITCH_MS:
                    # A second live stream on one m-line (simulcast we declined): forwarding
                    # both would interleave two pictures. Keep the one we have.
                    return None
                # the publisher switched SSRC: a new epoch for the consumers
                self._rtp.pop(producer.ssrc, None)
                producer.attach_source(ssrc, producer.rtx_ssrc, producer.audio_level_id,
                                       self._raw.send_rtcp)
            producer.ssrc = ssrc
            handler = producer.receive
        self._rtp[ssrc] = handler
        return handler

    async def _on_rtcp(self, data: bytes) -> None:
        self._receive_rtcp(data)

    def _receive_rtcp(self, data: bytes) -> None:
        """Plaintext RTCP, from aiortc's DTLS transport (through ``_on_rtcp``) or, on a socket
        read in C (sfu/_ingress.c), straight from the datagram callback. Read in place
        (rtcp.walk): an invalid compound is dropped whole."""
        self.last_packet_ms = self.router.now_ms()
        consumers = self._rtcp_consumers
        for packet_type, count, start, end in rtcp.walk(data):
            if packet_type == rtcp.RTCP_RR:
                start += 4
            elif packet_type == rtcp.RTCP_SR:
                self._on_sender_report(*rtcp.SENDER.unpack_from(data, start))
                start += 24
            elif packet_type == rtcp.RTCP_RTPFB:
                consumer = consumers.get(rtcp.MEDIA_SSRC.unpack_from(data, start)[0])
                if consumer is not None and count == rtcp.FMT_NACK and end - start > 8:
                    consumer.retransmit(rtcp.read_nack(data, start + 8, end, 128))
                continue
            else:
                self._on_psfb(data, count, start, end)
                continue
            for block in range(start, start + 24 * count, 24):
                ssrc, lost, jitter, lsr, dlsr = rtcp.REPORT_BLOCK.unpack_from(data, block)
                consumer = consumers.get(ssrc)
                if consumer is not None:
                    cumulative = lost & 0xFFFFFF  # 24-bit signed
                    consumer.handle_report(lost >> 24, cumulative - ((cumulative & 0x800000) << 1),
                                           jitter, lsr, dlsr)

    def _on_sender_report(self, ssrc: int, ntp: int, rtp_ts: int) -> None:
        for producer in self.producers.values():
            if producer.ssrc == ssrc:
                producer.handle_sender_report(ntp, rtp_ts)

    def _on_psfb(self, data: bytes, fmt: int, start: int, end: int) -> None:
        """A payload-specific feedback message, its payload at ``start:end`` of ``data``."""
        if fmt in (rtcp.FMT_PLI, rtcp.FMT_FIR):
            ssrcs = [rtcp.MEDIA_SSRC.unpack_from(data, start)[0]]
            if fmt == rtcp.FMT_FIR and end - start >= 12:
                ssrcs.append(rtcp.WORD.unpack_from(data, start + 8)[0])  # the first FCI's SSRC
            for ssrc in ssrcs:
                consumer = self._rtcp_consumers.get(ssrc)
                if consumer is not None:
                    consumer.keyframe_requested()
                    break
        elif fmt == rtcp.FMT_REMB:
            remb = rtcp.read_remb(data, start + 8, end)
            if remb is not None:
                bitrate, ssrcs = remb
                consumers = [c for c in map(self._rtcp_consumers.get, ssrcs) if c is not None]
                # one estimate for all those streams: each gets its share, not the whole
                shares = congestion.share(bitrate, [c.producer.bitrate for c in consumers])
                for consumer, estimate in zip(consumers, shares):
                    consumer.remb_bitrate = estimate

    # --- chat and state ----------------------------------------------------------------------

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.chat is None:
            self._open_chat(channel)

    def _open_chat(self, channel: RTCDataChannel) -> None:
        self.chat = channel

        @channel.on("message")
        def on_message(message: Any) -> None:
            if isinstance(message, str) and len(message.encode()) <= MAX_CHAT_BYTES:
                self.router.relay_chat(self.participant_id, message)

    def send_chat(self, sender: str, message: str) -> bool:
        if self.chat is None or self.chat.readyState != "open":
            return False
        self.chat.send(json.dumps({"from": sender, "message": message}))
        return True

    def _on_state(self, pc: RTCPeerConnection) -> None:
        if pc is not self.pc or self.closed:
            return
        self.state = pc.connectionState
        if self.state == "closed" and self.kind == "subscribe":
            # The client closed its connection (DTLS close_notify: aiortc then closes ours). A
            # subscribe connection never comes back (a resume makes a new one), and a closed one
            # left in the room would refuse every later track. (A publish transport stays: its
            # producers wait for the client's resume on a new connection.)
            self.router.connection_closed(self)
            return
        logger.info("room %s: %s %s transport %s", self.router.id, self.participant_id,
                    self.kind, self.state)
        if self.connected:
            self._heard_at_connect = self.last_packet_ms
            aiortc_hooks.drop_spent_ice_state(pc)
            for consumer in self.consumers.values():
                consumer.resume()
        self.router.transport_state_changed(self)

    def release_dtls(self) -> bool:
        """Free the connection's OpenSSL state (aiortc_hooks.release_dtls) once it has no data
        channel and the client has sent media or RTCP since it connected: authenticated by this
        connection's SRTP keys (the connected state comes before any packet they unprotect), so
        its handshake is complete. That is every publish connection without chat, WHEP's
        subscribe connections, and subscribe connections the SFU offered without chat
        (``sfu.api.Subscribe``). A client that closes a released connection without signalling
        is seen by the consent check its close_notify prompts (aiortc_hooks.ReleasedDtls), in
        seconds. The router calls it each tick from the connection's connected state on, until
        it returns True: nothing more to do until the transport connects again (released,
        keeping its data channel, or no longer connected)."""
        pc = self.pc
        if self._dtls_released is pc or not self.connected or pc.sctp is not None:
            return True
        if self.last_packet_ms == self._heard_at_connect:
            return False  # no packet since it connected yet
        for dtls in aiortc_hooks.dtls_transports(pc):
            aiortc_hooks.release_dtls(dtls)
        self._dtls_released = pc
        return True

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        for producer in self.producers.values():
            producer.close()
        for consumer in list(self.consumers.values()):
            consumer.close(reason)
        self.producers.clear()
        self.consumers.clear()
        self._rtp.clear()
        self._rtcp_consumers.clear()
        self._raw = None
        self.pc.remove_all_listeners()
        await self.pc.close()


if ingress.configure_transport is not None:
    ingress.configure_transport(Transport._receive_rtp, Producer.receive)
