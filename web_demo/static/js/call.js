// Media for one session, per the SFU contract (sfu/api.py): two peer connections.
//   publish:   we offer our camera + microphone (sendonly); the SFU answers.
//   subscribe: the SFU offers the other participants' tracks; we answer (recvonly).
// Trickle ICE both ways; after a socket resume or an ICE failure, a new publish connection
// (the SFU's way to restart ICE); mute / camera toggles; device switching without
// renegotiation (replaceTrack); a connection-quality estimate from getStats; chat over the "chat" data channel that the SFU
// opens on the subscribe transport (it relays text to the others as {"from", "message"}).
//
// The wire is abstracted by `media` (see signalling.js: MediaChannel), so this module never
// builds protocol messages itself:
//   media.offer(transport, sdp) -> Promise<answer sdp>
//   media.answer(transport, sdp, offerId) -> Promise
//   media.candidate(transport, candidateInit | null)
//   media.onServerOffer(({transport, sdp, offerId}) => ...)
//   media.onCandidate(({transport, candidate}) => ...)

const STATS_INTERVAL_MS = 2000;
// Signalling failures that a resume repairs (see signalling.js).
const LOST = new Set(["connection_lost", "not_connected", "timeout"]);

export class Call extends EventTarget {
  /**
   * @param {object} options
   * @param {object} options.media  the signalling side of media (see above)
   * @param {RTCIceServer[]} options.iceServers
   */
  constructor({ media, iceServers = [] }) {
    super();
    this.media = media;
    this.iceServers = iceServers;
    this.localStream = null;
    this.remoteStream = new MediaStream();
    this.publish = null;
    this.subscribe = null;
    this.audioMuted = false;
    this.videoOff = false;
    this.quality = { level: "unknown", rtt: null, loss: null, fps: null };
    this.closed = false;
    this._pendingCandidates = { publish: [], subscribe: [] };
    this._statsTimer = null;
    this._lastInbound = null;
    this._unsubscribe = [];
    this._restarting = false;
    this.chat = null;
    this._chatOutbox = [];
    // Screen sharing: our shared screen (a second video track on the publish connection), and
    // the other side's (a second video track arriving on the subscribe connection).
    this.screenTrack = null;
    this.remoteScreen = null;
  }

  get sharingScreen() {
    return Boolean(this.screenTrack);
  }

  /** Share a screen, window or tab: a second video track, forwarded by the SFU like the camera. */
  async shareScreen() {
    if (this.closed || !this.publish || this.screenTrack) return;
    const display = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
    const track = display.getVideoTracks()[0];
    track.contentHint = "detail"; // text stays sharp: resolution before frame rate
    this.screenTrack = track;
    // The browser's own "Stop sharing" ends the track.
    track.addEventListener("ended", () => this.stopScreen().catch((e) => this._fail(e)));
    this.publish.addTransceiver(track, { direction: "sendonly", streams: [display] });
    this._emit("controls", {});
    this._emit("localscreen", { track });
    await this._negotiatePublish();
  }

  async stopScreen() {
    const track = this.screenTrack;
    if (!track) return;
    this.screenTrack = null;
    track.stop();
    const sender = this.publish?.getSenders().find((s) => s.track === track);
    this._emit("controls", {});
    this._emit("localscreen", { track: null });
    if (sender && !this.closed) {
      // The m-line goes inactive: the SFU closes that producer and the other side's consumer.
      this.publish.removeTrack(sender);
      await this._negotiatePublish();
    }
  }

  /** Ask for camera and microphone, then publish them and wait for the SFU's offers. */
  async start({ audioDeviceId, videoDeviceId } = {}) {
    this._unsubscribe.push(this.media.onServerOffer((offer) => this._onServerOffer(offer).catch((e) => this._fail(e))));
    this._unsubscribe.push(this.media.onCandidate((c) => this._onRemoteCandidate(c)));
    const stream = await navigator.mediaDevices.getUserMedia(constraints(audioDeviceId, videoDeviceId));
    if (this.closed) {
      // The call ended while the camera was starting: switch it off again, publish nothing.
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    this.localStream = stream;
    this._emit("localstream", { stream: this.localStream });
    this.publish = this._newPublish();
    this._statsTimer = setInterval(() => this._sampleStats().catch(() => {}), STATS_INTERVAL_MS);
    try {
      await this._negotiatePublish();
    } catch (error) {
      // The socket dropped mid-offer: the restart that follows the resume offers again.
      if (!LOST.has(error.code)) throw error;
    }
  }

  /** After a socket resume (or a failed publish connection): find a new network path.
   * The SFU restarts a publish transport by replacing its connection (docs/media-api.md,
   * "Resume"), so the offer comes from a new RTCPeerConnection with the same tracks, and the
   * old one closes once the new one is answered. The subscribe side is re-offered by the SFU. */
  async restartIce() {
    if (this.closed || !this.publish || this._restarting) return;
    this._restarting = true;
    const old = this.publish;
    try {
      this.publish = this._newPublish();
      this._pendingCandidates.publish = [];
      await this._negotiatePublish();
      old.close();
    } catch (error) {
      // The socket dropped again: the next resume restarts again.
      if (!LOST.has(error.code)) throw error;
    } finally {
      this._restarting = false;
    }
  }

  setAudioMuted(muted) {
    this.audioMuted = muted;
    for (const track of this.localStream?.getAudioTracks() ?? []) track.enabled = !muted;
    this._emit("controls", {});
  }

  setVideoOff(off) {
    this.videoOff = off;
    for (const track of this.localStream?.getVideoTracks() ?? []) track.enabled = !off;
    this._emit("controls", {});
  }

  /** Switch microphone or camera: a new track on the same sender, no renegotiation. */
  async useDevice(kind, deviceId) {
    if (!this.localStream || !this.publish) return;
    const constraint = kind === "audio" ? { audio: { deviceId: { exact: deviceId } } } : { video: { deviceId: { exact: deviceId }, width: 640, height: 480 } };
    const fresh = await navigator.mediaDevices.getUserMedia(constraint);
    const track = kind === "audio" ? fresh.getAudioTracks()[0] : fresh.getVideoTracks()[0];
    const sender = this.publish.getSenders().find((s) => s.track && s.track.kind === track.kind);
    const old = kind === "audio" ? this.localStream.getAudioTracks()[0] : this.localStream.getVideoTracks()[0];
    track.enabled = kind === "audio" ? !this.audioMuted : !this.videoOff;
    if (sender) await sender.replaceTrack(track);
    if (old) {
      this.localStream.removeTrack(old);
      old.stop();
    }
    this.localStream.addTrack(track);
    this._emit("localstream", { stream: this.localStream });
  }

  /** Decoded inbound video frames (tests assert this grows) and other raw figures. */
  async inboundVideo() {
    if (!this.subscribe) return { framesDecoded: 0, bytesReceived: 0 };
    const stats = await this.subscribe.getStats();
    let framesDecoded = 0;
    let bytesReceived = 0;
    stats.forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "video") {
        framesDecoded += report.framesDecoded || 0;
        bytesReceived += report.bytesReceived || 0;
      }
    });
    return { framesDecoded, bytesReceived };
  }

  /** Send a chat line to the others. Lines typed before the SFU's channel is open (or while it
   * is being replaced after a resume) wait for it. */
  sendChat(text) {
    if (this.closed) return false;
    if (this.chat?.readyState === "open") this.chat.send(text);
    else this._chatOutbox.push(text);
    return true;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this._statsTimer);
    for (const off of this._unsubscribe) off();
    for (const pc of [this.publish, this.subscribe]) pc?.close();
    for (const track of this.localStream?.getTracks() ?? []) track.stop();
    this.screenTrack?.stop();
    this._emit("closed", {});
  }

  // --- internals ---------------------------------------------------------------------------

  _newPublish() {
    const pc = this._peer("publish");
    for (const track of this.localStream.getTracks()) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [this.localStream] });
    }
    if (this.screenTrack) pc.addTransceiver(this.screenTrack, { direction: "sendonly", streams: [new MediaStream([this.screenTrack])] });
    return pc;
  }

  _peer(transport) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    // A replaced connection's late events must not act on its successor's transport.
    const current = () => pc === (transport === "publish" ? this.publish : this.subscribe);
    pc.addEventListener("icecandidate", (event) => {
      if (current()) this.media.candidate(transport, event.candidate ? event.candidate.toJSON() : null);
    });
    pc.addEventListener("connectionstatechange", () => {
      if (!current()) return;
      this._emit("transportstate", { transport, state: pc.connectionState });
      if (pc.connectionState === "failed" && transport === "publish") this.restartIce().catch((e) => this._fail(e));
    });
    pc.addEventListener("datachannel", (event) => this._useChat(event.channel));
    if (transport === "subscribe") {
      pc.addEventListener("track", (event) => {
        const track = event.track;
        // The SFU offers the other side's tracks in the order they were published: the first
        // video m-line is their camera, a later one their shared screen.
        const videos = pc.getTransceivers().filter((t) => t.receiver.track.kind === "video");
        if (track.kind === "video" && videos.indexOf(event.transceiver) > 0) {
          this._onRemoteScreen(track);
          return;
        }
        for (const old of this.remoteStream.getTracks().filter((t) => t.kind === track.kind)) this.remoteStream.removeTrack(old);
        this.remoteStream.addTrack(track);
        track.addEventListener("ended", () => this.remoteStream.removeTrack(track));
        this._emit("remotestream", { stream: this.remoteStream });
      });
    }
    return pc;
  }

  _onRemoteScreen(track) {
    this.remoteScreen = new MediaStream([track]);
    const tell = () => this._emit("remotescreen", { stream: this.remoteScreen, on: !track.muted && track.readyState === "live" });
    track.addEventListener("mute", tell);
    track.addEventListener("unmute", tell);
    track.addEventListener("ended", tell);
    tell();
  }

  async _negotiatePublish() {
    const pc = this.publish;
    await pc.setLocalDescription(await pc.createOffer());
    const sdp = await this.media.offer("publish", pc.localDescription.sdp);
    if (this.closed || pc !== this.publish) return;
    await pc.setRemoteDescription({ type: "answer", sdp });
    await this._flushCandidates("publish");
  }

  async _onServerOffer({ transport = "subscribe", sdp, offerId, newConnection }) {
    if (this.closed) return;
    if (transport !== "subscribe") return;
    // The server says whether this offer opens a new connection (after a resume the SFU
    // replaces the subscribe transport: new ICE and DTLS) or renegotiates the one we have.
    if (newConnection && this.subscribe) {
      this.subscribe.close();
      this.subscribe = null;
      this._lastInbound = null;
    }
    if (!this.subscribe) this.subscribe = this._peer("subscribe");
    const pc = this.subscribe;
    await pc.setRemoteDescription({ type: "offer", sdp });
    await this._flushCandidates("subscribe");
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    await this.media.answer("subscribe", pc.localDescription.sdp, offerId);
  }

  _useChat(channel) {
    if (channel.label !== "chat") return;
    this.chat = channel;
    const flush = () => {
      for (const text of this._chatOutbox.splice(0)) channel.send(text);
    };
    if (channel.readyState === "open") flush();
    else channel.addEventListener("open", flush, { once: true });
    channel.addEventListener("message", (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      if (data && typeof data.message === "string") this._emit("chat", { from: String(data.from ?? ""), text: data.message });
    });
  }

  _onRemoteCandidate({ transport, candidate }) {
    const pc = transport === "publish" ? this.publish : this.subscribe;
    // Candidates can overtake the description they belong to: hold them until it is set.
    if (!pc || !pc.remoteDescription) {
      this._pendingCandidates[transport]?.push(candidate);
      return;
    }
    pc.addIceCandidate(candidate ?? undefined).catch(() => {});
  }

  async _flushCandidates(transport) {
    const pc = transport === "publish" ? this.publish : this.subscribe;
    const queued = this._pendingCandidates[transport].splice(0);
    for (const candidate of queued) await pc.addIceCandidate(candidate ?? undefined).catch(() => {});
  }

  async _sampleStats() {
    if (!this.subscribe && !this.publish) return;
    let rtt = null;
    let packetsReceived = 0;
    let packetsLost = 0;
    let fps = null;
    let framesDecoded = 0;
    for (const pc of [this.publish, this.subscribe]) {
      if (!pc) continue;
      const stats = await pc.getStats();
      stats.forEach((report) => {
        if (report.type === "candidate-pair" && report.nominated && report.state === "succeeded" && report.currentRoundTripTime != null) {
          rtt = Math.max(rtt ?? 0, report.currentRoundTripTime);
        }
        if (report.type === "inbound-rtp") {
          packetsReceived += report.packetsReceived || 0;
          packetsLost += Math.max(0, report.packetsLost || 0);
          if (report.kind === "video") {
            framesDecoded += report.framesDecoded || 0;
            if (report.framesPerSecond != null) fps = report.framesPerSecond;
          }
        }
      });
    }
    const last = this._lastInbound;
    this._lastInbound = { packetsReceived, packetsLost, framesDecoded };
    let loss = null;
    let flowing = false;
    if (last) {
      const received = packetsReceived - last.packetsReceived;
      const lost = packetsLost - last.packetsLost;
      loss = received + lost > 0 ? lost / (received + lost) : null;
      flowing = framesDecoded > last.framesDecoded;
    }
    this.quality = { level: qualityLevel({ rtt, loss, flowing, started: Boolean(last) }), rtt, loss, fps };
    this._emit("quality", this.quality);
  }

  _fail(error) {
    this._emit("error", { error });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function constraints(audioDeviceId, videoDeviceId) {
  return {
    audio: audioDeviceId ? { deviceId: { exact: audioDeviceId } } : true,
    video: { width: 640, height: 480, ...(videoDeviceId ? { deviceId: { exact: videoDeviceId } } : {}) },
  };
}

/** "good" | "fair" | "poor" | "no-media" | "unknown" from round-trip time and loss. */
export function qualityLevel({ rtt, loss, flowing, started }) {
  if (!started) return "unknown";
  if (!flowing) return "no-media";
  if ((loss ?? 0) > 0.08 || (rtt ?? 0) > 0.5) return "poor";
  if ((loss ?? 0) > 0.02 || (rtt ?? 0) > 0.25) return "fair";
  return "good";
}

/** Cameras and microphones for the device pickers (labels appear once permission is given). */
export async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  return {
    audio: devices.filter((d) => d.kind === "audioinput"),
    video: devices.filter((d) => d.kind === "videoinput"),
  };
}
