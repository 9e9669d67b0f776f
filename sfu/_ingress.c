/* sfu._ingress: the receiving side of a worker's shared UDP socket (sfu/udp_mux.py) in C.
 *
 * Reader(fd, mux, on_error) is the socket's event-loop reader (loop.add_reader): each call takes
 * up to BATCH datagrams per recvmmsg(2) and stamps them with one arrival time. SRTP from an
 * address whose connection is DTLS-connected is unprotected here and goes straight to the
 * handler its SSRC has in the Transport's table, as Transport._receive_rtp would call it:
 * handler(plain, b0, b1, seq, ts, payload_offset, arrival_ms). SRTCP from such an address is
 * unprotected here too and goes to the _Sink's RTCP handler (Transport._receive_rtcp), skipping
 * aioice's STUN parse and queue and the wake of aiortc's DTLS task per report. Everything else
 * goes, as the bytes and address tuple the event loop would give, to mux.datagram_received, the
 * Python path, which stays the reference: STUN, DTLS, an address or SSRC nobody owns yet, a
 * connection not yet connected. A new SRTP session (DTLS keyed, or keyed again) is adopted here
 * with _Sink.adopt, as SrtpStunProtocol.datagram_received does: a subscriber sends SRTCP only.
 *
 * The socket's send batch (MuxSocket.batch) is held for the call: what the handlers forward joins
 * it without a flush scheduled (Batch.held) and goes out by one send at the call's end, as
 * MuxSocket.flush would send it: no Python frame and no event-loop callback per wake-up. A batch
 * that is sfu._fastsend's Batch is held, sent and emptied through its capsule _batch_capi, with
 * no attribute set and no method called.
 *
 * No state of its own: for every datagram it reads the Python tables (MuxSocket.by_addr, the
 * connection's aiortc_hooks._Sink and DTLS transport, Transport._rtp), so ICE, consent, DTLS,
 * restarts, address changes and learnt SSRCs need no registration here. What it found for an
 * address (chain_t) spares the reads of the endpoint's receiver, its _Sink, the sink's DTLS
 * transport and that one's state and SRTP session while the dicts they came from are unchanged
 * (CPython 3.11's dict versions), as sfu/_fastsend.c's Route spares its sender's lookups.
 * configure(unprotect_fn, unprotect_rtcp_fn, connected, muxed_type, sink_name, sink_type)
 * (sfu.aiortc_hooks, at import) and configure_transport(receive_rtp, producer_receive)
 * (sfu.transport) give it libsrtp's srtp_unprotect and srtp_unprotect_rtcp, aiortc's connected
 * state, the MuxedProtocol class, the _Sink's name and class, Transport._receive_rtp and
 * Producer.receive; until then every datagram takes the Python path. A handler that is a
 * producer's receive gets the packet through sfu._fastsend's receive in C first (its plain case),
 * then, if that declines, as a call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "_batch_capi.h"
#include "_report.h"

#define BATCH 32
#define SLOT 65536 /* any UDP datagram: none is ever truncated */
#define ROUNDS 8   /* recvmmsg calls per readiness at most: the loop's other work waits meanwhile */
#define SET_BITS 8 /* address tuples are kept in 256 sets of WAYS, of each family */
#define SETS (1 << SET_BITS)
#define WAYS 2     /* two peers in one set both keep their tuple (with 20 peers, likely) */
#define GOLDEN 0x9E3779B97F4A7C15ULL /* the product's high bits mix all of the key */
#define NTP_UNIX_OFFSET_MS 2208988800000LL

typedef int (*srtp_fn)(void *ctx, void *packet, int *len);
/* sfu._fastsend's receive_packet: 1 taken, 0 for Producer.receive's Python, -1 on an exception */
typedef int (*receive_fn)(PyObject *producer, PyObject *data, long long b0, long long b1,
                          long long seq, long long ts, long long offset, long long arrival_ms);
static receive_fn g_producer_fast;
static const batch_capi_t *g_batch; /* sfu._fastsend's Batch in C; NULL: its Python methods */
static PyObject *g_producer_receive;

static unsigned long long g_unprotect, g_unprotect_rtcp;
static PyObject *g_connected, *g_muxed_type, *g_sink_name, *g_receive_rtp;
static PyObject *s_by_addr, *s_datagram_received, *s_receiver, *s_dtls, *s_state, *s_rx_srtp,
    *s_session, *s_adopt, *s_context, *s_deliver, *s_rtcp, *s_batch,
    *s_held, *s_sock, *s_writable, *s_send, *s_clear;
static PyObject *small[256]; /* 0-255: b0, b1 and most payload offsets without an allocation */

#if PY_VERSION_HEX < 0x030C0000
#define DICT_VERSIONS 1
#define DICT_VERSION(d) (((PyDictObject *)(d))->ma_version_tag)
#endif

/* The _Sink's slots (sfu.aiortc_hooks._Sink.__slots__): their offsets in a _Sink */
enum { SINK_DTLS, SINK_SESSION, SINK_CONTEXT, SINK_DELIVER, SINK_RTCP, SINK_SLOTS };
static const char *const sink_slot_names[SINK_SLOTS] = {"dtls", "session", "context", "deliver",
                                                         "rtcp"};
static PyTypeObject *g_sink_type; /* NULL: nothing is kept in a chain_t */
static Py_ssize_t g_sink_offset[SINK_SLOTS];

/* What fast() found for one address: its MuxedProtocol, that one's receiver (the aioice
 * Connection), the receiver's _Sink, the sink's DTLS transport and that one's receiving SRTP
 * session, with the versions of the three instance dicts they were read from. None of them is
 * owned: each is only looked at when the object before it in the chain is the one found and its
 * dict has that version still. A version is never given to two dicts, nor twice to one
 * (CPython 3.11 numbers every dict's making and change from one counter), so an unchanged
 * version means an unchanged dict that holds the next object alive: a connection that left is
 * not kept alive by it, and one that changed is read afresh. */
typedef struct {
    PyObject *endpoint, *receiver, *sink, *dtls, *srtp;
    uint64_t v_endpoint, v_receiver, v_dtls; /* 0: nothing known */
} chain_t;

typedef struct {
    uint64_t key; /* address << 16 | port, +1 so that 0 is free */
    PyObject *addr;
    chain_t chain;
} cached_t;

/* IPv6: the four values the event loop's tuple holds, its tuple and the (host, port) key */
typedef struct {
    struct in6_addr host;
    uint32_t flowinfo, scope_id;
    uint16_t port;
    PyObject *addr, *key; /* NULL: a free slot */
    chain_t chain;
} cached6_t;

typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *mux, *batch, *on_error;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage names[BATCH];
    char *buffer;
    cached_t cache[SETS][WAYS];    /* each set most recently used first */
    cached6_t cache6[SETS][WAYS];
    Py_ssize_t taken; /* datagrams that took the C path: for the tests */
} Reader;

static PyObject *as_int(long v) {
    if (v >= 0 && v < 256) return Py_NewRef(small[v]);
    return PyLong_FromLong(v);
}

static int same6(const cached6_t *c, const struct sockaddr_in6 *v6) {
    return c->addr != NULL && !memcmp(&c->host, &v6->sin6_addr, sizeof(c->host)) &&
           c->port == v6->sin6_port && c->flowinfo == v6->sin6_flowinfo &&
           c->scope_id == v6->sin6_scope_id;
}

/* The address as the event loop gives it: (host, port) for IPv4, (host, port, flowinfo,
 * scope_id) for IPv6; *key gets the (host, port) that MuxSocket.by_addr is keyed by. Both are
 * kept per remote address (cache, cache6): a peer's datagrams make no tuple each. A set is
 * chosen by the high bits of a multiplicative hash of the whole address (peers on one host
 * differ in the port only) and holds WAYS peers, the least recently used one making way. */
static PyObject *address(Reader *self, const struct sockaddr_storage *sa, PyObject **key,
                         chain_t **chain) {
    char host[INET6_ADDRSTRLEN];
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        uint64_t k = (((uint64_t)ntohl(v4->sin_addr.s_addr) << 16) | ntohs(v4->sin_port)) + 1;
        cached_t *set = self->cache[(k * GOLDEN) >> (64 - SET_BITS)];
        if (set[0].key != k) {
            int way = 1;
            while (way < WAYS && set[way].key != k) way++;
            cached_t found, old = {0};
            if (way < WAYS) found = set[way];
            else {
                if (inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host)) == NULL) return NULL;
                PyObject *addr = Py_BuildValue("(si)", host, ntohs(v4->sin_port));
                if (addr == NULL) return NULL;
                found = (cached_t){.key = k, .addr = addr};
                old = set[--way]; /* the least recently used makes way */
            }
            memmove(set + 1, set, (size_t)way * sizeof(*set));
            set[0] = found;
            Py_XDECREF(old.addr);
        }
        *key = Py_NewRef(set[0].addr);
        *chain = &set[0].chain;
        return Py_NewRef(set[0].addr);
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        uint64_t hi, lo;
        memcpy(&hi, v6->sin6_addr.s6_addr, 8);
        memcpy(&lo, v6->sin6_addr.s6_addr + 8, 8);
        uint64_t h = (hi ^ lo ^ v6->sin6_port ^ ((uint64_t)v6->sin6_flowinfo << 16) ^
                      ((uint64_t)v6->sin6_scope_id << 40)) * GOLDEN;
        cached6_t *set = self->cache6[h >> (64 - SET_BITS)];
        if (!same6(&set[0], v6)) {
            int way = 1;
            while (way < WAYS && !same6(&set[way], v6)) way++;
            cached6_t found, old = {.addr = NULL, .key = NULL};
            if (way < WAYS) found = set[way];
            else {
                if (inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host)) == NULL) return NULL;
                PyObject *addr = Py_BuildValue("(siII)", host, ntohs(v6->sin6_port),
                                               ntohl(v6->sin6_flowinfo), v6->sin6_scope_id);
                if (addr == NULL) return NULL;
                PyObject *k = PyTuple_GetSlice(addr, 0, 2);
                if (k == NULL) { Py_DECREF(addr); return NULL; }
                found = (cached6_t){.host = v6->sin6_addr, .flowinfo = v6->sin6_flowinfo,
                                    .scope_id = v6->sin6_scope_id, .port = v6->sin6_port,
                                    .addr = addr, .key = k};
                old = set[--way];
            }
            memmove(set + 1, set, (size_t)way * sizeof(*set));
            set[0] = found;
            Py_XDECREF(old.addr);
            Py_XDECREF(old.key);
        }
        *key = Py_NewRef(set[0].key);
        *chain = &set[0].chain;
        return Py_NewRef(set[0].addr);
    }
    *chain = NULL;
    *key = Py_NewRef(Py_None);
    return Py_NewRef(Py_None);
}

/* forwarder.payload_offset: the payload's offset, or -1 when the header is truncated */
static Py_ssize_t payload_offset(const unsigned char *p, Py_ssize_t n) {
    if (n < 12) return -1;
    Py_ssize_t offset = 12 + (p[0] & 0x0F) * 4;
    if (p[0] & 0x10) {
        if (offset + 4 > n) return -1;
        offset += 4 + ((p[offset + 2] << 8) | p[offset + 3]) * 4;
    }
    return offset <= n ? offset : -1;
}

/* TransportBase: sfu.transport.Transport's base class, the two attributes receive_rtp reads and
 * writes per packet as C members (the SSRC's handler table ``_rtp``, ``last_packet_ms``): no
 * attribute lookup, no change of the Transport's dict per packet. Python reads and sets them as
 * before. */
#define SEEN 4 /* SSRCs whose handlers a transport keeps at hand: a publisher's audio, video, RTX */

typedef struct {
    PyObject_HEAD
    PyObject *rtp;
    long long last_packet_ms;
#ifdef DICT_VERSIONS
    /* the handlers of the last SSRCs looked up in ``rtp`` at its version ``seen_version`` (0:
     * none), borrowed from it: valid while that version holds (a new dict has a new version),
     * so a packet needs no int object and no dict lookup */
    uint64_t seen_version;
    int seen_count;
    unsigned long seen_ssrc[SEEN];
    PyObject *seen_handler[SEEN];
#endif
} TransportBase;

#ifdef DICT_VERSIONS
/* the handler ``table`` (t->rtp) holds for ``ssrc``, as kept (a new reference), else NULL */
static PyObject *seen_handler(TransportBase *t, PyObject *table, unsigned long ssrc) {
    if (DICT_VERSION(table) != t->seen_version) {
        t->seen_version = DICT_VERSION(table);
        t->seen_count = 0;
        return NULL;
    }
    for (int i = 0; i < t->seen_count; i++)
        if (t->seen_ssrc[i] == ssrc) return Py_NewRef(t->seen_handler[i]);
    return NULL;
}

/* keep ``handler``, just read from ``table`` for ``ssrc`` (seen_handler came first) */
static void keep_handler(TransportBase *t, unsigned long ssrc, PyObject *handler) {
    int i = t->seen_count < SEEN ? t->seen_count++ : (int)(ssrc % SEEN);
    t->seen_ssrc[i] = ssrc;
    t->seen_handler[i] = handler;
}
#endif

static int tb_traverse(TransportBase *t, visitproc visit, void *arg) {
    Py_VISIT(t->rtp);
    return 0;
}

static int tb_clear(TransportBase *t) {
    Py_CLEAR(t->rtp);
    return 0;
}

static void tb_dealloc(TransportBase *t) {
    PyObject_GC_UnTrack(t);
    tb_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMemberDef tb_members[] = {
    {"_rtp", T_OBJECT_EX, offsetof(TransportBase, rtp), 0, "SSRC -> its packet handler"},
    {"last_packet_ms", T_LONGLONG, offsetof(TransportBase, last_packet_ms), 0,
     "the arrival time of the last RTP or RTCP packet heard"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TransportBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._ingress.TransportBase",
    .tp_basicsize = sizeof(TransportBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "sfu.transport.Transport's per-packet state, in C for the reader",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)tb_dealloc,
    .tp_traverse = (traverseproc)tb_traverse,
    .tp_clear = (inquiry)tb_clear,
    .tp_members = tb_members,
};

/* Transport._receive_rtp for an SSRC it knows: 1 done, 0 for the Python (it learns the SSRC),
 * -1 on an exception. */
static int receive_rtp(PyObject *transport, PyObject *plain, PyObject *arrival) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(plain);
    Py_ssize_t n = PyBytes_GET_SIZE(plain);
    Py_ssize_t offset = payload_offset(p, n);
    if (offset < 0) return 1; /* (a packet shorter than 12 bytes too) */
    unsigned long ssrc = ((unsigned long)p[8] << 24) | ((unsigned long)p[9] << 16) |
                         ((unsigned long)p[10] << 8) | p[11];
    if (!PyObject_TypeCheck(transport, &TransportBaseType)) return 0;
    TransportBase *t = (TransportBase *)transport;
    long long ms = PyLong_AsLongLong(arrival);
    if (ms == -1 && PyErr_Occurred()) return -1;
    int result = -1;
    PyObject *table = Py_XNewRef(t->rtp), *key = NULL, *handler = NULL, *args[7] = {NULL};
    if (table == NULL || !PyDict_Check(table)) { result = 0; goto end; }
#ifdef DICT_VERSIONS
    handler = seen_handler(t, table, ssrc);
#endif
    if (handler == NULL) {
        if ((key = PyLong_FromUnsignedLong(ssrc)) == NULL) goto end;
        handler = Py_XNewRef(PyDict_GetItemWithError(table, key));
        if (handler == NULL) { result = PyErr_Occurred() ? -1 : 0; goto end; }
#ifdef DICT_VERSIONS
        keep_handler(t, ssrc, handler);
#endif
    }
    t->last_packet_ms = ms;
    unsigned seq = (p[2] << 8) | p[3];
    unsigned long ts = ((unsigned long)p[4] << 24) | ((unsigned long)p[5] << 16) |
                       ((unsigned long)p[6] << 8) | p[7];
    if (g_producer_fast != NULL && PyMethod_Check(handler) &&
        PyMethod_GET_FUNCTION(handler) == g_producer_receive) {
        int taken = g_producer_fast(PyMethod_GET_SELF(handler), plain, p[0], p[1], seq, ts,
                                    offset, ms);
        if (taken != 0) { result = taken; goto end; }
    }
    args[0] = Py_NewRef(plain);
    args[1] = as_int(p[0]);
    args[2] = as_int(p[1]);
    args[3] = PyLong_FromLong(seq);
    args[4] = PyLong_FromUnsignedLong(ts);
    args[5] = as_int((long)offset);
    args[6] = Py_NewRef(arrival);
    for (int i = 0; i < 7; i++) if (args[i] == NULL) goto end;
    PyObject *done = PyObject_Vectorcall(handler, args, 7, NULL);
    if (done == NULL) goto end;
    Py_DECREF(done);
    result = 1;
end:
    for (int i = 0; i < 7; i++) Py_XDECREF(args[i]);
    Py_XDECREF(table); Py_XDECREF(key); Py_XDECREF(handler);
    return result;
}

#ifdef DICT_VERSIONS
/* the version of obj's instance dict (made if it had none), 0 when it has none */
static uint64_t dict_version(PyObject *obj) {
    PyObject **dict = _PyObject_GetDictPtr(obj);
    if (dict != NULL && *dict != NULL) return DICT_VERSION(*dict);
    PyErr_Clear(); /* (no memory to make it: nothing is kept) */
    return 0;
}

/* whether obj's instance dict holds ``value`` under ``name``: what was read is what the dict
 * version covers, not a class attribute */
static int held_in_dict(PyObject *obj, PyObject *name, PyObject *value) {
    PyObject **dict = _PyObject_GetDictPtr(obj);
    if (dict == NULL || *dict == NULL || !PyDict_CheckExact(*dict)) { PyErr_Clear(); return 0; }
    PyObject *v = PyDict_GetItemWithError(*dict, name);
    PyErr_Clear();
    return v == value;
}

/* a slot of a _Sink (borrowed), NULL when unset */
static PyObject *sink_slot(PyObject *sink, int slot) {
    return *(PyObject **)((char *)sink + g_sink_offset[slot]);
}

/* the sink and SRTP session ``chain`` holds for ``endpoint`` (borrowed), if it holds still:
 * the endpoint's receiver, its _Sink and the sink's DTLS transport are the ones read then, and
 * that transport is connected with the session it had */
static PyObject *chain_sink(const chain_t *chain, PyObject *endpoint) {
    if (chain == NULL || chain->v_endpoint == 0 || chain->endpoint != endpoint ||
        dict_version(endpoint) != chain->v_endpoint ||
        dict_version(chain->receiver) != chain->v_receiver)
        return NULL;
    /* (a _Sink's slots change with no dict: its DTLS transport is read, then checked) */
    if (sink_slot(chain->sink, SINK_DTLS) != chain->dtls ||
        dict_version(chain->dtls) != chain->v_dtls)
        return NULL;
    return chain->sink;
}
#endif

/* SrtpStunProtocol.datagram_received's short cut for an RTP datagram from ``key``, or with
 * ``rtcp`` the one of aiortc's DTLS transport for SRTCP: 1 done (delivered, or dropped as aiortc
 * drops a replayed or forged packet), 0 for the Python path, -1 on an exception. Nothing is
 * decided here that the Python path would decide otherwise. ``chain``: what was found for the
 * address (NULL: nothing is kept). */
static int fast(PyObject *by_addr, PyObject *key, chain_t *chain, const char *data, Py_ssize_t n,
                PyObject *arrival, int rtcp) {
    if (!(rtcp ? g_unprotect_rtcp : g_unprotect) || g_muxed_type == NULL) return 0;
    PyObject *endpoint = PyDict_GetItemWithError(by_addr, key);
    if (endpoint == NULL) return PyErr_Occurred() ? -1 : 0;
    if ((PyObject *)Py_TYPE(endpoint) != g_muxed_type) return 0;
    int result = -1;
    PyObject *receiver = NULL, *dict = NULL, *sink = NULL, *dtls = NULL, *state = NULL,
             *srtp = NULL, *session = NULL, *context = NULL, *deliver = NULL, *plain = NULL;
    Py_INCREF(endpoint);
#ifdef DICT_VERSIONS
    PyObject *known = chain_sink(chain, endpoint);
    if (known != NULL && sink_slot(known, SINK_SESSION) == chain->srtp) {
        sink = Py_NewRef(known);
        session = Py_NewRef(chain->srtp);
        context = Py_XNewRef(sink_slot(sink, SINK_CONTEXT));
        deliver = Py_XNewRef(sink_slot(sink, rtcp ? SINK_RTCP : SINK_DELIVER));
        if (context == NULL || deliver == NULL) { result = 0; goto end; }
        goto unprotect;
    }
    /* the versions come before the reads: a change meanwhile leaves nothing kept */
    chain_t found = {.endpoint = endpoint, .v_endpoint = dict_version(endpoint)};
#endif
    if ((receiver = PyObject_GetAttr(endpoint, s_receiver)) == NULL) goto end;
    /* the aioice Connection's own __dict__, as receiver.__dict__.get(_SINK) */
    if ((dict = PyObject_GenericGetDict(receiver, NULL)) == NULL) { PyErr_Clear(); result = 0; goto end; }
#ifdef DICT_VERSIONS
    found.receiver = receiver;
    found.v_receiver = DICT_VERSION(dict);
#endif
    sink = Py_XNewRef(PyDict_GetItemWithError(dict, g_sink_name));
    if (sink == NULL) { result = PyErr_Occurred() ? -1 : 0; goto end; }
    if ((dtls = PyObject_GetAttr(sink, s_dtls)) == NULL) goto end;
#ifdef DICT_VERSIONS
    found.v_dtls = dict_version(dtls);
#endif
    if ((state = PyObject_GetAttr(dtls, s_state)) == NULL) goto end;
    if ((srtp = PyObject_GetAttr(dtls, s_rx_srtp)) == NULL) goto end;
    if ((session = PyObject_GetAttr(sink, s_session)) == NULL) goto end;
    if (state != g_connected || srtp == Py_None) { result = 0; goto end; }
    if (srtp != session) {
        PyObject *done = PyObject_CallMethodOneArg(sink, s_adopt, srtp);
        if (done == NULL) goto end;
        Py_DECREF(done);
    }
#ifdef DICT_VERSIONS
    /* kept for the next datagram if nothing changed since the versions were read (the adopt
     * may have run anything) and the sink is a _Sink whose slots are read in place */
    if (chain != NULL && (PyObject *)Py_TYPE(sink) == (PyObject *)g_sink_type &&
        found.v_endpoint && found.v_receiver && found.v_dtls &&
        dict_version(endpoint) == found.v_endpoint && DICT_VERSION(dict) == found.v_receiver &&
        dict_version(dtls) == found.v_dtls && sink_slot(sink, SINK_DTLS) == dtls &&
        sink_slot(sink, SINK_SESSION) == srtp && held_in_dict(endpoint, s_receiver, receiver) &&
        held_in_dict(dtls, s_state, state) && held_in_dict(dtls, s_rx_srtp, srtp)) {
        found.sink = sink;
        found.dtls = dtls;
        found.srtp = srtp;
        *chain = found;
    }
#endif
    if ((context = PyObject_GetAttr(sink, s_context)) == NULL) goto end;
    if ((deliver = PyObject_GetAttr(sink, rtcp ? s_rtcp : s_deliver)) == NULL) goto end;
#ifdef DICT_VERSIONS
unprotect:
#endif
    {
        unsigned long long ctx = PyLong_AsUnsignedLongLong(context);
        if (ctx == (unsigned long long)-1 && PyErr_Occurred()) goto end;
        if (!ctx) { result = 0; goto end; }
        if (deliver == Py_None) { result = 0; goto end; } /* no RTCP sink: aiortc's path */

        if ((plain = PyBytes_FromStringAndSize(data, n)) == NULL) goto end;
        int len = (int)n;
        srtp_fn unprotect = (srtp_fn)(uintptr_t)(rtcp ? g_unprotect_rtcp : g_unprotect);
        if (unprotect((void *)(uintptr_t)ctx, PyBytes_AS_STRING(plain), &len)) {
            result = 1;
            goto end;
        }
        if (_PyBytes_Resize(&plain, len) < 0) goto end;
    }
    if (rtcp) {
        PyObject *done = PyObject_CallOneArg(deliver, plain);
        result = done == NULL ? -1 : 1;
        Py_XDECREF(done);
        goto end;
    }
    /* from here the packet is spent (libsrtp's replay window has it): the sink takes it */
    result = 0;
    if (g_receive_rtp != NULL && PyMethod_Check(deliver) &&
        PyMethod_GET_FUNCTION(deliver) == g_receive_rtp)
        result = receive_rtp(PyMethod_GET_SELF(deliver), plain, arrival);
    if (result == 0) {
        PyObject *done = PyObject_CallFunctionObjArgs(deliver, plain, arrival, NULL);
        result = done == NULL ? -1 : 1;
        Py_XDECREF(done);
    }
end:
    Py_DECREF(endpoint);
    Py_XDECREF(receiver); Py_XDECREF(dict); Py_XDECREF(sink); Py_XDECREF(dtls);
    Py_XDECREF(state); Py_XDECREF(srtp); Py_XDECREF(session); Py_XDECREF(context);
    Py_XDECREF(deliver); Py_XDECREF(plain);
    return result;
}

/* One datagram: 0, or -1 with an exception set. */
static int handle(Reader *self, PyObject *by_addr, const char *data, Py_ssize_t n,
                  const struct sockaddr_storage *name, PyObject *arrival) {
    PyObject *key = NULL;
    chain_t *chain = NULL;
    PyObject *addr = address(self, name, &key, &chain);
    if (addr == NULL) return -1;
    const unsigned char *p = (const unsigned char *)data;
    int r = 0;
    /* RTP (version 2) and not SRTCP (RFC 5761), as SrtpStunProtocol.datagram_received sorts */
    if (n > 12 && p[0] > 127 && p[0] < 192 && !(p[1] > 191 && p[1] < 224) && by_addr != NULL)
        r = fast(by_addr, key, chain, data, n, arrival, 0);
    /* SRTCP as aiortc's DTLS transport sorts it (aiortc.rtp.is_rtcp: second byte 192-208) */
    else if (n > 1 && p[0] > 127 && p[0] < 192 && p[1] > 191 && p[1] < 209 && by_addr != NULL)
        r = fast(by_addr, key, chain, data, n, arrival, 1);
    if (r == 0) {
        PyObject *bytes = PyBytes_FromStringAndSize(data, n);
        if (bytes == NULL) r = -1;
        else {
            PyObject *done = PyObject_CallMethodObjArgs(self->mux, s_datagram_received, bytes,
                                                        addr, NULL);
            Py_DECREF(bytes);
            r = done == NULL ? -1 : 0;
            Py_XDECREF(done);
        }
    } else if (r == 1) {
        self->taken++;
        r = 0;
    }
    Py_DECREF(addr);
    Py_DECREF(key);
    return r;
}

/* An exception from one datagram's handler goes to on_error(exc) (the loop's exception
 * handler); the batch goes on, as the event loop goes on after a failing callback. */
static int report(Reader *self) {
    PyObject *exc = take_exception();
    if (exc == NULL) return -1; /* KeyboardInterrupt and such */
    PyObject *done = PyObject_CallOneArg(self->on_error, exc);
    Py_DECREF(exc);
    if (done == NULL) PyErr_WriteUnraisable(self->on_error);
    Py_XDECREF(done);
    return 0;
}

static PyObject *now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return PyLong_FromLongLong((long long)t.tv_sec * 1000 + t.tv_nsec / 1000000 + NTP_UNIX_OFFSET_MS);
}

/* up to ROUNDS recvmmsg calls, each datagram handled: 0, or -1 with an exception that is not
 * one handler's own */
static int read_all(Reader *self) {
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < BATCH; i++) self->msgs[i].msg_hdr.msg_namelen = sizeof(self->names[i]);
        int got = recvmmsg(self->fd, self->msgs, BATCH, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EBADF) break;
            continue; /* an ICMP error for one peer (asyncio's error_received, ignored) */
        }
        PyObject *arrival = now_ms();
        if (arrival == NULL) return -1;
        PyObject *by_addr = PyObject_GetAttr(self->mux, s_by_addr);
        if (by_addr != NULL && !PyDict_Check(by_addr)) Py_CLEAR(by_addr);
        PyErr_Clear();
        for (int i = 0; i < got; i++) {
            if (handle(self, by_addr, (const char *)self->iov[i].iov_base,
                       (Py_ssize_t)self->msgs[i].msg_len, &self->names[i], arrival) < 0 &&
                report(self) < 0) {
                Py_DECREF(arrival);
                Py_XDECREF(by_addr);
                return -1;
            }
        }
        Py_DECREF(arrival);
        Py_XDECREF(by_addr);
        if (got < BATCH) break; /* drained: no recvmmsg just to hear EAGAIN */
    }
    return 0;
}

/* the reader's batch as sfu._fastsend's Batch in C, or NULL (a Python one: its methods) */
static const batch_capi_t *native_batch(Reader *self) {
    return g_batch != NULL && Py_TYPE(self->batch) == g_batch->type ? g_batch : NULL;
}

/* the batch sent when the socket is there and writable: 0, or -1 with an exception */
static int send_batch(Reader *self, const batch_capi_t *native) {
    int r = -1;
    PyObject *sock = NULL, *writable = NULL;
    if ((sock = PyObject_GetAttr(self->mux, s_sock)) == NULL) goto end;
    if ((writable = PyObject_GetAttr(self->mux, s_writable)) == NULL) goto end;
    int open = sock == Py_None ? 0 : PyObject_IsTrue(writable);
    if (open < 0) goto end;
    if (open) {
        /* a full socket buffer drops the rest: media is never queued without bound */
        PyObject *done = native ? native->send(self->batch, sock)
                                : PyObject_CallMethodOneArg(self->batch, s_send, sock);
        if (done == NULL) goto end;
        Py_DECREF(done);
    }
    r = 0;
end:
    Py_XDECREF(sock); Py_XDECREF(writable);
    return r;
}

/* MuxSocket.flush for what the call queued: sent (send_batch), then emptied and let go whatever
 * happened, so that senders schedule a flush again. 0, or -1 with an exception. */
static int flush(Reader *self) {
    PyObject *batch = self->batch;
    const batch_capi_t *native = native_batch(self);
    Py_ssize_t n = native ? native->count(batch) : PyObject_Length(batch);
    int r = n > 0 ? send_batch(self, native) : (n < 0 ? -1 : 0);
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    if (native) {
        native->empty(batch);
        native->hold(batch, 0);
    } else {
        PyObject *done = n ? PyObject_CallMethodNoArgs(batch, s_clear) : Py_NewRef(Py_None);
        if (done == NULL || PyObject_SetAttr(batch, s_held, Py_False) < 0)
            PyErr_WriteUnraisable(batch);
        Py_XDECREF(done);
    }
    PyErr_Restore(type, exc, tb);
    return r;
}

/* The socket's batch is held for the call: what the handlers forward (sfu/_fastsend.c's fan-out,
 * RawSender) goes out by one send at its end, with no flush scheduled on the event loop. */
static PyObject *reader_call(Reader *self, PyObject *args, PyObject *kwargs) {
    if (self->batch != NULL) {
        const batch_capi_t *native = native_batch(self);
        if (native) native->hold(self->batch, 1);
        else if (PyObject_SetAttr(self->batch, s_held, Py_True) < 0) return NULL;
    }
    int r = read_all(self);
    if (self->batch != NULL) {
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb); /* a KeyboardInterrupt waits for the send */
        if (flush(self) < 0) {
            if (type != NULL) PyErr_WriteUnraisable(self->mux);
            else if (report(self) < 0) r = -1;
        }
        if (type != NULL) PyErr_Restore(type, exc, tb);
    }
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

static int reader_init(Reader *self, PyObject *args, PyObject *kwargs) {
    int fd;
    PyObject *mux, *on_error;
    if (!PyArg_ParseTuple(args, "iOO", &fd, &mux, &on_error)) return -1;
    if (self->buffer == NULL && (self->buffer = PyMem_RawMalloc((size_t)BATCH * SLOT)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* the socket's batch (sfu.udp_mux.MuxSocket.batch), the same for its life */
    PyObject *batch = PyObject_GetAttr(mux, s_batch);
    if (batch == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
        PyErr_Clear(); /* none: senders schedule their flush */
    }
    self->fd = fd;
    Py_XSETREF(self->batch, batch);
    Py_XSETREF(self->mux, Py_NewRef(mux));
    Py_XSETREF(self->on_error, Py_NewRef(on_error));
    for (int i = 0; i < BATCH; i++) {
        self->iov[i].iov_base = self->buffer + (size_t)i * SLOT;
        self->iov[i].iov_len = SLOT;
        memset(&self->msgs[i].msg_hdr, 0, sizeof(self->msgs[i].msg_hdr));
        self->msgs[i].msg_hdr.msg_name = &self->names[i];
        self->msgs[i].msg_hdr.msg_iov = &self->iov[i];
        self->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

static int reader_traverse(Reader *self, visitproc visit, void *arg) {
    Py_VISIT(self->mux);
    Py_VISIT(self->batch);
    Py_VISIT(self->on_error);
    return 0;
}

static int reader_clear(Reader *self) {
    Py_CLEAR(self->mux);
    Py_CLEAR(self->batch);
    Py_CLEAR(self->on_error);
    for (int i = 0; i < SETS; i++)
        for (int j = 0; j < WAYS; j++) {
            Py_CLEAR(self->cache[i][j].addr);
            self->cache[i][j].key = 0;
            Py_CLEAR(self->cache6[i][j].addr);
            Py_CLEAR(self->cache6[i][j].key);
        }
    return 0;
}

static void reader_dealloc(Reader *self) {
    PyObject_GC_UnTrack(self);
    reader_clear(self);
    PyMem_RawFree(self->buffer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef reader_members[] = {
    {"taken", T_PYSSIZET, offsetof(Reader, taken), READONLY,
     "datagrams (SRTP, SRTCP) delivered, or dropped as replayed/forged, by the C path"},
    {NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._ingress.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Reader(fd, mux, on_error): call it when fd is readable",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_call = (ternaryfunc)reader_call,
    .tp_traverse = (traverseproc)reader_traverse,
    .tp_clear = (inquiry)reader_clear,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_members = reader_members,
};

/* the offsets of sink_type's slots, or none kept (NULL) when a name is not a slot of its own */
static int configure_sink(PyTypeObject *sink_type) {
    Py_CLEAR(g_sink_type);
    for (int i = 0; i < SINK_SLOTS; i++) {
        PyObject *d = PyDict_GetItemString(sink_type->tp_dict, sink_slot_names[i]);
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) return 0;
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return 0;
        g_sink_offset[i] = m->offset;
    }
    g_sink_type = (PyTypeObject *)Py_NewRef(sink_type);
    return 0;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    unsigned long long fn, rtcp_fn;
    PyObject *connected, *muxed_type, *sink_name, *sink_type;
    if (!PyArg_ParseTuple(args, "KKOO!UO!", &fn, &rtcp_fn, &connected, &PyType_Type, &muxed_type,
                          &sink_name, &PyType_Type, &sink_type))
        return NULL;
    configure_sink((PyTypeObject *)sink_type);
    g_unprotect = fn;
    g_unprotect_rtcp = rtcp_fn;
    Py_XSETREF(g_connected, Py_NewRef(connected));
    Py_XSETREF(g_muxed_type, Py_NewRef(muxed_type));
    Py_XSETREF(g_sink_name, Py_NewRef(sink_name));
    Py_RETURN_NONE;
}

static PyObject *configure_transport(PyObject *self, PyObject *args) {
    PyObject *receive_rtp, *producer_receive;
    if (!PyArg_ParseTuple(args, "OO", &receive_rtp, &producer_receive)) return NULL;
    receive_fn fast = PyCapsule_Import("sfu._fastsend._receive_capi", 0);
    if (fast == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ImportError) && !PyErr_ExceptionMatches(PyExc_AttributeError))
            return NULL;
        PyErr_Clear(); /* built without sfu._fastsend: every producer's receive is a call */
    }
    const batch_capi_t *batch = NULL;
    if (fast != NULL && (batch = PyCapsule_Import("sfu._fastsend._batch_capi", 0)) == NULL)
        return NULL;
    Py_XSETREF(g_receive_rtp, Py_NewRef(receive_rtp));
    Py_XSETREF(g_producer_receive, Py_NewRef(producer_receive));
    g_producer_fast = fast;
    g_batch = batch;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(unprotect_fn, unprotect_rtcp_fn, connected_state, muxed_protocol_type, sink_name, "
     "sink_type)"},
    {"configure_transport", configure_transport, METH_VARARGS,
     "configure_transport(Transport._receive_rtp, Producer.receive): whose handler table the C "
     "path reads, and the handler it may run in C"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ingress", NULL, -1, methods};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__ingress(void) {
    INTERN(s_by_addr, "by_addr");
    INTERN(s_datagram_received, "datagram_received");
    INTERN(s_receiver, "receiver");
    INTERN(s_dtls, "dtls");
    INTERN(s_state, "_state");
    INTERN(s_rx_srtp, "_rx_srtp");
    INTERN(s_session, "session");
    INTERN(s_adopt, "adopt");
    INTERN(s_context, "context");
    INTERN(s_deliver, "deliver");
    INTERN(s_rtcp, "rtcp");
    INTERN(s_batch, "batch");
    INTERN(s_held, "held");
    INTERN(s_sock, "_sock");
    INTERN(s_writable, "writable");
    INTERN(s_send, "send");
    INTERN(s_clear, "clear");
    for (int i = 0; i < 256; i++)
        if ((small[i] = PyLong_FromLong(i)) == NULL) return NULL;
    if (PyType_Ready(&ReaderType) < 0 || PyType_Ready(&TransportBaseType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0) { Py_DECREF(m); return NULL; }
    if (PyModule_AddObjectRef(m, "TransportBase", (PyObject *)&TransportBaseType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
