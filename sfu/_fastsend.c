/* sfu._fastsend: a shared socket's batch of SRTP datagrams, protected by libsrtp straight into
 * one buffer and sent by sendmmsg(2) from it: no Python object per datagram.
 *
 * Batch(): the batch of one socket. protect_queue() and fanout() protect packets into it;
 * send(sock) -> the number of datagrams the kernel took, by one sendmmsg per 64 datagrams. The
 * same contract as sfu.fastsend.PyBatch, the Python fallback: a full socket buffer (EAGAIN) ends
 * the send, what is left is dropped (the caller clears the batch); any other error drops that one
 * datagram and goes on. A closed socket sends nothing: 0, no exception.
 * Built by setup.py at install time (optional: sfu/fastsend.py falls back to Python).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "_batch_capi.h"
#include "_report.h"

#define CHUNK 64
#define MAX_HEADER 64

static int resolve(PyObject *addr, struct sockaddr_storage *out, socklen_t *len);

/* Address((host, port)): an address resolved once, for a Batch's datagrams (what fanout()
 * queues: a Route resolves its address when it is set, not sendmmsg per datagram).
 * ``.address`` is the (host, port) it was made from. */
typedef struct {
    PyObject_HEAD
    PyObject *address;
    struct sockaddr_storage sa;
    socklen_t len;
} Address;

static PyObject *address_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *addr;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &addr)) return NULL;
    Address *self = (Address *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    if (resolve(addr, &self->sa, &self->len) < 0) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "Address: not a numeric (host, port)");
        return NULL;
    }
    self->address = Py_NewRef(addr);
    return (PyObject *)self;
}

static void address_dealloc(Address *self) {
    Py_XDECREF(self->address);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef address_members[] = {
    {"address", T_OBJECT, offsetof(Address, address), READONLY, "(host, port)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject AddressType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fastsend.Address",
    .tp_basicsize = sizeof(Address),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Address((host, port)): resolved once for a Batch",
    .tp_new = address_new,
    .tp_dealloc = (destructor)address_dealloc,
    .tp_members = address_members,
};

static int resolve(PyObject *addr, struct sockaddr_storage *out, socklen_t *len) {
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) return -1;
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (host == NULL) { PyErr_Clear(); return -1; }
    long port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port < 0 || port > 65535) { PyErr_Clear(); return -1; }
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((unsigned short)port);
        *len = sizeof(*v4);
        return 0;
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((unsigned short)port);
        *len = sizeof(*v6);
        return 0;
    }
    return -1;
}

/* Batch(): one shared socket's datagrams of an event-loop turn, protected in place in one buffer.
 * The buffer grows (doubling, from BATCH_FIRST) up to BATCH_LIMIT and is kept for the socket's
 * life: a turn costs no allocation once the buffer fits it. A packet that would take the buffer
 * past BATCH_LIMIT is dropped, as a full socket buffer drops the rest of a batch (a socket's send
 * buffer holds far less). Each datagram holds its Address, whose sockaddr sendmmsg reads. */
#define BATCH_FIRST (64 * 1024)
#define BATCH_LIMIT (16 * 1024 * 1024)

typedef struct {
    size_t offset;
    size_t len;
    PyObject *address;  /* an Address */
} datagram_t;

typedef struct {
    PyObject_HEAD
    char *buf;
    size_t used, size;
    datagram_t *datagrams;
    Py_ssize_t count, slots;
    /* the socket's C reader (sfu/_ingress.c) is in its call and sends the batch at its end:
     * a sender that makes the batch non-empty schedules no flush meanwhile */
    char held;
} Batch;

static void batch_empty(Batch *b) {
    for (Py_ssize_t i = 0; i < b->count; i++) Py_DECREF(b->datagrams[i].address);
    b->count = 0;
    b->used = 0;
}

static void batch_dealloc(Batch *b) {
    batch_empty(b);
    PyMem_Free(b->buf);
    PyMem_Free(b->datagrams);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

/* Where the next datagram of up to ``n`` bytes goes: NULL with an exception when memory ran out,
 * NULL without one when the batch is at BATCH_LIMIT (the packet is dropped). */
static char *batch_reserve(Batch *b, size_t n) {
    if (b->count == b->slots) {
        Py_ssize_t slots = b->slots ? b->slots * 2 : 256;
        datagram_t *more = PyMem_Realloc(b->datagrams, (size_t)slots * sizeof(datagram_t));
        if (more == NULL) { PyErr_NoMemory(); return NULL; }
        b->datagrams = more;
        b->slots = slots;
    }
    if (b->used + n > b->size) {
        size_t size = b->size ? b->size : BATCH_FIRST;
        while (size < b->used + n) size *= 2;
        if (size > BATCH_LIMIT) size = BATCH_LIMIT;
        if (b->used + n > size) return NULL;
        char *more = PyMem_Realloc(b->buf, size);
        if (more == NULL) { PyErr_NoMemory(); return NULL; }
        b->buf = more;
        b->size = size;
    }
    return b->buf + b->used;
}

/* the datagram batch_reserve gave the place of, ``len`` bytes long, to ``address`` */
static void batch_commit(Batch *b, size_t len, PyObject *address) {
    datagram_t *d = &b->datagrams[b->count++];
    d->offset = b->used;
    d->len = len;
    d->address = Py_NewRef(address);
    b->used += len;
}

static PyObject *batch_send(Batch *b, PyObject *sock) {
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0) {
        /* a closed socket (fileno() -1): nothing sent, as PyBatch's sendto fails each datagram */
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
        PyErr_Clear();
        return PyLong_FromLong(0);
    }
    struct mmsghdr msgs[CHUNK];
    struct iovec iov[CHUNK];
    Py_ssize_t i = 0;
    long sent = 0;
    while (i < b->count) {
        int k = 0;
        for (; i < b->count && k < CHUNK; i++, k++) {
            datagram_t *d = &b->datagrams[i];
            Address *a = (Address *)d->address;
            iov[k].iov_base = b->buf + d->offset;
            iov[k].iov_len = d->len;
            memset(&msgs[k].msg_hdr, 0, sizeof(msgs[k].msg_hdr));
            msgs[k].msg_hdr.msg_name = &a->sa;
            msgs[k].msg_hdr.msg_namelen = a->len;
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        int offset = 0;
        while (offset < k) {
            int r = sendmmsg(fd, msgs + offset, (unsigned int)(k - offset), 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) return PyLong_FromLong(sent);
                offset++;  /* this datagram's error is its own */
                continue;
            }
            offset += r;
            sent += r;
        }
    }
    return PyLong_FromLong(sent);
}

static PyObject *batch_clear(Batch *b, PyObject *unused) {
    batch_empty(b);
    Py_RETURN_NONE;
}

static PyObject *batch_items(Batch *b, PyObject *unused) {
    PyObject *items = PyList_New(b->count);
    if (items == NULL) return NULL;
    for (Py_ssize_t i = 0; i < b->count; i++) {
        datagram_t *d = &b->datagrams[i];
        PyObject *item = Py_BuildValue("(y#O)", b->buf + d->offset, (Py_ssize_t)d->len,
                                       ((Address *)d->address)->address);
        if (item == NULL) { Py_DECREF(items); return NULL; }
        PyList_SET_ITEM(items, i, item);
    }
    return items;
}

static Py_ssize_t batch_length(Batch *b) { return b->count; }

static PyObject *batch_get_capacity(Batch *b, void *closure) { return PyLong_FromSize_t(b->size); }

static Py_ssize_t capi_count(PyObject *b) { return ((Batch *)b)->count; }
static PyObject *capi_send(PyObject *b, PyObject *sock) { return batch_send((Batch *)b, sock); }
static void capi_empty(PyObject *b) { batch_empty((Batch *)b); }
static void capi_hold(PyObject *b, int held) { ((Batch *)b)->held = (char)held; }

static PyTypeObject BatchType;
static const batch_capi_t batch_capi = {&BatchType, capi_count, capi_send, capi_empty, capi_hold};

static PyMethodDef batch_methods[] = {
    {"send", (PyCFunction)batch_send, METH_O,
     "send(sock) -> datagrams the kernel took, by sendmmsg(2); a full socket buffer ends it"},
    {"clear", (PyCFunction)batch_clear, METH_NOARGS, "empty (the buffer is kept)"},
    {"items", (PyCFunction)batch_items, METH_NOARGS, "[(datagram, (host, port)), ...]"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef batch_members[] = {
    {"held", T_BOOL, offsetof(Batch, held), 0,
     "a reader sends the batch at the end of its call: no flush to schedule"},
    {NULL},
};

static PyGetSetDef batch_getset[] = {
    {"capacity", (getter)batch_get_capacity, NULL, "the buffer's size in bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods batch_sequence = {.sq_length = (lenfunc)batch_length};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fastsend.Batch",
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Batch(): a shared socket's SRTP datagrams in one buffer, for sendmmsg(2)",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_methods = batch_methods,
    .tp_members = batch_members,
    .tp_getset = batch_getset,
    .tp_as_sequence = &batch_sequence,
};

/* libsrtp 2's srtp_protect, reached through the address pylibsrtp's cffi module gives for it:
 * the extension links against nothing but libc. */
typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

/* libsrtp's protect (srtp_protect or srtp_protect_rtcp) of ``n`` bytes of plaintext at ``from``
 * into the batch, to ``address``: 0 when queued or dropped (the batch at its limit), -1 with an
 * exception, libsrtp's status (> 0) when it refused the packet. */
static int protect_into(Batch *b, unsigned long long fn, unsigned long long context, int trailer,
                        const char *from, Py_ssize_t n, PyObject *address) {
    char *out = batch_reserve(b, (size_t)n + (size_t)trailer);
    if (out == NULL) return PyErr_Occurred() ? -1 : 0;
    memcpy(out, from, (size_t)n);
    int len = (int)n;
    int status = ((protect_fn)(uintptr_t)fn)((void *)(uintptr_t)context, out, &len);
    if (status) return status;
    batch_commit(b, (size_t)len, address);
    return 0;
}

/* protect_queue(protect, session, owner, max_trailer, packet, address, batch)
 *   -> len(batch) after queueing, or -status when srtp_protect refused the packet.
 * SRTP-protects ``packet`` with libsrtp's ``session`` straight into ``batch`` (one copy), to
 * ``address`` ((host, port) or an Address; one that is not a numeric address is not sent, as
 * sendto would not). ``owner`` is not used: it is the object whose life keeps ``session`` valid
 * (pylibsrtp's Session), passed so that whoever binds the first arguments (functools.partial)
 * holds it too. */
static PyObject *protect_queue(PyObject *self, PyObject *args) {
    unsigned long long fn, session;
    Py_buffer packet;
    int trailer;
    PyObject *owner, *address;
    Batch *batch;
    if (!PyArg_ParseTuple(args, "KKOiy*OO!", &fn, &session, &owner, &trailer, &packet, &address,
                          &BatchType, &batch))
        return NULL;
    if (Py_IS_TYPE(address, &AddressType)) {
        Py_INCREF(address);
    } else if ((address = PyObject_CallOneArg((PyObject *)&AddressType, address)) == NULL) {
        PyBuffer_Release(&packet);
        if (!PyErr_ExceptionMatches(PyExc_ValueError) && !PyErr_ExceptionMatches(PyExc_TypeError))
            return NULL;
        PyErr_Clear();
        return PyLong_FromSsize_t(batch->count);
    }
    int r = protect_into(batch, fn, session, trailer, packet.buf, packet.len, address);
    PyBuffer_Release(&packet);
    Py_DECREF(address);
    if (r < 0) return NULL;
    if (r > 0) return PyLong_FromLong(-r);
    return PyLong_FromSsize_t(batch->count);
}

/* unprotect(unprotect_fn, session, owner, packet) -> the plaintext, or -status when libsrtp
 * refused the packet (replayed, forged). libsrtp's srtp_unprotect on pylibsrtp's context, into a
 * new bytes object: pylibsrtp's own wrapper copies twice and allocates an int per packet. */
static PyObject *unprotect(PyObject *self, PyObject *args) {
    unsigned long long fn, session;
    Py_buffer packet;
    PyObject *owner;
    if (!PyArg_ParseTuple(args, "KKOy*", &fn, &session, &owner, &packet)) return NULL;
    PyObject *out = PyBytes_FromStringAndSize(packet.buf, packet.len);
    int len = (int)packet.len;
    PyBuffer_Release(&packet);
    if (out == NULL) return NULL;
    int status = ((protect_fn)(uintptr_t)fn)((void *)(uintptr_t)session, PyBytes_AS_STRING(out), &len);
    if (status) {
        Py_DECREF(out);
        return PyLong_FromLong(-status);
    }
    if (_PyBytes_Resize(&out, len) < 0) return NULL;
    return out;
}


/* ---- the fan-out of one incoming packet (sfu.producer.Producer.receive) -------------------
 *
 * fanout(consumers, args) where args = (payload, padding, marker, seq, ts, level, abs24,
 * keyframe, epoch, arrival_ms), Consumer.forward's arguments. For each consumer it does what
 * sfu.consumer.Consumer.forward and sfu.aiortc_hooks.RawSender.send_rtp do: rewrite the header,
 * keep the unprotected packet in the consumer's NACK ring, SRTP-protect into the shared socket's
 * batch, count. Consumer's hot attributes live in C (ConsumerBase, its base class when this
 * extension is built), so Python's own writes (a re-base, a pause, a resize) are what C reads,
 * and C's counters are what Python reads. A RawSender's route is a Route, which the sender sets
 * when it (re)routes and which holds the address already resolved. Whatever is not the plain case
 * (no route, waiting for a keyframe, a new epoch, a new pair or SRTP session, a closed gate,
 * configure() not called) goes to the consumer's own Python, which stays the
 * reference: consumer.forward. An exception from one consumer goes to its consumer.failed(exc),
 * and the fan-out carries on. configure(protect_fn, connected, error) sets libsrtp's
 * srtp_protect, the DTLS state that means connected and the exception srtp_protect failures
 * raise. */

static unsigned long long g_protect;
static int g_trailer;
static PyObject *g_connected, *g_error;
static PyObject *s_state, *s_tx_srtp, *s_writable, *s_schedule_flush, *s_forward, *s_failed,
    *s_fast, *s_one;

static PyObject *configure(PyObject *self, PyObject *args) {
    unsigned long long fn;
    int trailer;
    PyObject *connected, *error;
    if (!PyArg_ParseTuple(args, "KiOO", &fn, &trailer, &connected, &error)) return NULL;
    g_protect = fn;
    g_trailer = trailer;
    Py_XSETREF(g_connected, Py_NewRef(connected));
    Py_XSETREF(g_error, Py_NewRef(error));
    Py_RETURN_NONE;
}

/* Route(dtls, nominated): a RawSender's way to a shared socket. set(pair, session, context,
 * address, batch, mux) when it routes there, clear() when it does not. Per packet
 * the fan-out checks only identities in dicts it holds (the DTLS transport's state and session,
 * the nominated pair, the socket's gate): what RawSender.send_rtp checks, without a lookup by type. */
/* Python 3.11 versions every dict (PEP 509; deprecated in 3.12): a tag that changes with any
 * change of it. A route that route_ready() found ready stays so while the tags of its three dicts
 * are the ones it was found ready with, and the four lookups are skipped. */
#if PY_VERSION_HEX < 0x030C0000
#define DICT_VERSIONS 1
#define DICT_VERSION(d) (((PyDictObject *)(d))->ma_version_tag)
#endif

typedef struct {
    PyObject_HEAD
    int ready;
#ifdef DICT_VERSIONS
    uint64_t seen_dtls, seen_nominated, seen_mux;  /* 0: not found ready since set() */
#endif
    PyObject *dtls_dict, *nominated;
    PyObject *pair, *srtp, *address, *mux, *mux_dict;
    Batch *batch;
    unsigned long long context;
} Route;

static int route_traverse(Route *r, visitproc visit, void *arg) {
    Py_VISIT(r->dtls_dict); Py_VISIT(r->nominated); Py_VISIT(r->pair); Py_VISIT(r->srtp);
    Py_VISIT(r->address); Py_VISIT(r->batch); Py_VISIT(r->mux);
    Py_VISIT(r->mux_dict);
    return 0;
}

static void route_forget(Route *r) {
    r->ready = 0;
#ifdef DICT_VERSIONS
    r->seen_dtls = r->seen_nominated = r->seen_mux = 0;
#endif
    Py_CLEAR(r->pair); Py_CLEAR(r->srtp); Py_CLEAR(r->address); Py_CLEAR(r->batch);
    Py_CLEAR(r->mux); Py_CLEAR(r->mux_dict);
}

static int route_clear_refs(Route *r) {
    route_forget(r);
    Py_CLEAR(r->dtls_dict); Py_CLEAR(r->nominated);
    return 0;
}

static void route_dealloc(Route *r) {
    PyObject_GC_UnTrack(r);
    route_clear_refs(r);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int route_init(Route *r, PyObject *args, PyObject *kwds) {
    PyObject *dtls, *nominated;
    if (!PyArg_ParseTuple(args, "OO!", &dtls, &PyDict_Type, &nominated)) return -1;
    PyObject *d = PyObject_GenericGetDict(dtls, NULL);
    if (d == NULL) return -1;
    route_clear_refs(r);
    r->dtls_dict = d;
    r->nominated = Py_NewRef(nominated);
    return 0;
}

static PyObject *route_set(Route *r, PyObject *args) {
    PyObject *pair, *srtp, *addr, *batch, *mux;
    unsigned long long context;
    if (!PyArg_ParseTuple(args, "OOKOOO", &pair, &srtp, &context, &addr, &batch, &mux))
        return NULL;
    if (!Py_IS_TYPE(batch, &BatchType)) {  /* sfu.fastsend.PyBatch: RawSender's Python fills it */
        route_forget(r);
        Py_RETURN_NONE;
    }
    PyObject *mux_dict = PyObject_GenericGetDict(mux, NULL);
    if (mux_dict == NULL) return NULL;
    PyObject *address = PyObject_CallOneArg((PyObject *)&AddressType, addr);
    if (address == NULL) {
        /* not an address sendmmsg takes: RawSender's Python sends it (and drops it) */
        Py_DECREF(mux_dict);
        PyErr_Clear();
        route_forget(r);
        Py_RETURN_NONE;
    }
    route_forget(r);
    r->pair = Py_NewRef(pair); r->srtp = Py_NewRef(srtp); r->address = address;
    r->batch = (Batch *)Py_NewRef(batch);
    r->mux = Py_NewRef(mux); r->mux_dict = mux_dict;
    r->context = context;
    r->ready = 1;
    Py_RETURN_NONE;
}

static PyObject *route_clear_method(Route *r, PyObject *unused) {
    route_forget(r);
    Py_RETURN_NONE;
}

static PyObject *route_get_ready(Route *r, void *closure) { return PyBool_FromLong(r->ready); }

static PyMethodDef route_methods[] = {
    {"set", (PyCFunction)route_set, METH_VARARGS,
     "set(pair, session, context, address, batch, mux)"},
    {"clear", (PyCFunction)route_clear_method, METH_NOARGS, "not routed to a shared socket"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef route_getset[] = {
    {"ready", (getter)route_get_ready, NULL, "set and not cleared since", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fastsend.Route",
    .tp_basicsize = sizeof(Route),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Route(dtls, nominated): a RawSender's route to a shared socket, for fanout()",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)route_init,
    .tp_dealloc = (destructor)route_dealloc,
    .tp_traverse = (traverseproc)route_traverse,
    .tp_clear = (inquiry)route_clear_refs,
    .tp_methods = route_methods,
    .tp_getset = route_getset,
};

/* 1 when the sender would take the packet into its batch as it is, 0 when RawSender.send_rtp
 * must look, -1 on an exception. */
static int route_ready(Route *r) {
    if (r == NULL || !r->ready) return 0;
#ifdef DICT_VERSIONS
    if (r->seen_dtls == DICT_VERSION(r->dtls_dict) &&
        r->seen_nominated == DICT_VERSION(r->nominated) && r->seen_mux == DICT_VERSION(r->mux_dict))
        return 1;
#endif
    PyObject *v = PyDict_GetItemWithError(r->dtls_dict, s_state);
    if (v != g_connected) return PyErr_Occurred() ? -1 : 0;
    v = PyDict_GetItemWithError(r->nominated, s_one);
    if (v != r->pair) return PyErr_Occurred() ? -1 : 0;
    v = PyDict_GetItemWithError(r->dtls_dict, s_tx_srtp);
    if (v != r->srtp) return PyErr_Occurred() ? -1 : 0;
    v = PyDict_GetItemWithError(r->mux_dict, s_writable);
    if (v == NULL) return PyErr_Occurred() ? -1 : 0;
    if (v != Py_True) return PyObject_IsTrue(v);
#ifdef DICT_VERSIONS
    r->seen_dtls = DICT_VERSION(r->dtls_dict);
    r->seen_nominated = DICT_VERSION(r->nominated);
    r->seen_mux = DICT_VERSION(r->mux_dict);
#endif
    return 1;
}

/* ConsumerBase: sfu.consumer.Consumer's base class, its per-packet fields as C members. */
typedef struct {
    PyObject_HEAD
    char paused, waiting, nack;
    long long epoch, seq_offset, ts_offset, last_seq, last_ts, last_ms, packets, bytes, size;
    PyObject *cache;        /* the NACK ring: a list of packets (bytearrays C reuses, or bytes) */
    PyObject *fast_sender;  /* the RawSender, or None */
    Route *route;           /* its Route, or NULL */
    PyObject *fast_header;  /* (template, kind, prefix) as Consumer.configure set it, or None */
    unsigned char header[MAX_HEADER];
    int hlen;               /* 0: not configured */
    int kind;
    long long prefix;
} ConsumerBase;

static int cb_traverse(ConsumerBase *c, visitproc visit, void *arg) {
    Py_VISIT(c->cache); Py_VISIT(c->fast_sender); Py_VISIT(c->route); Py_VISIT(c->fast_header);
    return 0;
}

static int cb_clear(ConsumerBase *c) {
    Py_CLEAR(c->cache); Py_CLEAR(c->fast_sender); Py_CLEAR(c->route); Py_CLEAR(c->fast_header);
    c->hlen = 0;
    return 0;
}

static void cb_dealloc(ConsumerBase *c) {
    PyObject_GC_UnTrack(c);
    cb_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *cb_get_sender(ConsumerBase *c, void *closure) {
    return Py_NewRef(c->fast_sender ? c->fast_sender : Py_None);
}

static int cb_set_sender(ConsumerBase *c, PyObject *value, void *closure) {
    if (value == NULL) value = Py_None;
    PyObject *route = NULL;
    if (value != Py_None && _PyObject_LookupAttr(value, s_fast, &route) < 0) return -1;
    if (route != NULL && !PyObject_TypeCheck(route, &RouteType)) Py_CLEAR(route);
    Py_XSETREF(c->route, (Route *)route);
    Py_XSETREF(c->fast_sender, Py_NewRef(value));
    return 0;
}

static PyObject *cb_get_header(ConsumerBase *c, void *closure) {
    return Py_NewRef(c->fast_header ? c->fast_header : Py_None);
}

static int cb_set_header(ConsumerBase *c, PyObject *value, void *closure) {
    if (value == NULL) value = Py_None;
    c->hlen = 0;
    if (value != Py_None) {
        PyObject *template;
        int kind;
        long long prefix;
        if (!PyArg_ParseTuple(value, "O!iL", &PyBytes_Type, &template, &kind, &prefix)) return -1;
        Py_ssize_t n = PyBytes_GET_SIZE(template);
        /* anything else stays with Python's forward */
        if (n >= 12 && n <= MAX_HEADER && (kind == 0 || n >= 20) && kind >= 0 && kind <= 3) {
            memcpy(c->header, PyBytes_AS_STRING(template), (size_t)n);
            c->hlen = (int)n;
            c->kind = kind;
            c->prefix = prefix;
        }
    }
    Py_XSETREF(c->fast_header, Py_NewRef(value));
    return 0;
}

static PyMemberDef cb_members[] = {
    {"paused", T_BOOL, offsetof(ConsumerBase, paused), 0, NULL},
    {"_nack", T_BOOL, offsetof(ConsumerBase, nack), 0,
     "the subscriber negotiated NACK: only then may a turn of the ring resize it"},
    {"_waiting", T_BOOL, offsetof(ConsumerBase, waiting), 0, NULL},
    {"_epoch", T_LONGLONG, offsetof(ConsumerBase, epoch), 0, NULL},
    {"_seq_offset", T_LONGLONG, offsetof(ConsumerBase, seq_offset), 0, NULL},
    {"_ts_offset", T_LONGLONG, offsetof(ConsumerBase, ts_offset), 0, NULL},
    {"_last_seq", T_LONGLONG, offsetof(ConsumerBase, last_seq), 0, NULL},
    {"_last_ts", T_LONGLONG, offsetof(ConsumerBase, last_ts), 0, NULL},
    {"_last_ms", T_LONGLONG, offsetof(ConsumerBase, last_ms), 0, NULL},
    {"packets", T_LONGLONG, offsetof(ConsumerBase, packets), 0, NULL},
    {"bytes", T_LONGLONG, offsetof(ConsumerBase, bytes), 0, NULL},
    {"_size", T_LONGLONG, offsetof(ConsumerBase, size), 0, NULL},
    {"_cache", T_OBJECT_EX, offsetof(ConsumerBase, cache), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef cb_getset[] = {
    {"fast_sender", (getter)cb_get_sender, (setter)cb_set_sender,
     "the RawSender behind send_rtp (its Route is what fanout() sends on), or None", NULL},
    {"_fast_header", (getter)cb_get_header, (setter)cb_set_header,
     "(our header with sequence number, timestamp and dynamic word zero, the dynamic word's "
     "kind: 0 none, 1 abs-send-time, 2 audio level, 3 a static block only, its prefix), or None",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ConsumerBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fastsend.ConsumerBase",
    .tp_basicsize = sizeof(ConsumerBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "sfu.consumer.Consumer's per-packet state, in C for fanout()",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)cb_dealloc,
    .tp_traverse = (traverseproc)cb_traverse,
    .tp_clear = (inquiry)cb_clear,
    .tp_members = cb_members,
    .tp_getset = cb_getset,
};

static void put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static void put32(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

/* the incoming packet, converted once for all consumers */
typedef struct {
    const char *payload;
    Py_ssize_t payload_len;
    long long padding, marker, seq, ts, level, abs24, epoch, arrival_ms;
} packet_t;

/* One consumer: 1 done, 0 for its Python, -1 on an exception (for consumer.failed). */
static int forward_one(PyObject *obj, const packet_t *p) {
    if (!g_protect || !PyObject_TypeCheck(obj, &ConsumerBaseType)) return 0;
    ConsumerBase *c = (ConsumerBase *)obj;
    if (c->paused) return 1;  /* Consumer.forward's first line */
    if (c->waiting || c->epoch != p->epoch || !c->hlen || c->size <= 0) return 0;
    int routed = route_ready(c->route);
    if (routed <= 0) return routed;
    Route *r = c->route;
    unsigned out_seq = (unsigned)((p->seq + c->seq_offset) & 0xFFFF);
    unsigned long out_ts = (unsigned long)((p->ts + c->ts_offset) & 0xFFFFFFFFLL);
    Py_ssize_t slot = (Py_ssize_t)(out_seq % (unsigned long long)c->size);
    int newest = ((out_seq - (unsigned)c->last_seq) & 0xFFFF) < 0x8000;
    /* the ring turns: Consumer._turned, in Python, may resize it (a ring without NACK keeps its
     * size: the turn of audio as browsers offer it, every NO_NACK_CACHE packets, is not called),
     * and the packet goes on here into the ring as it now is, as Consumer.forward does */
    if (newest && slot == 0 && c->nack) {
        /* Python runs: ``r`` is held meanwhile, and must still be the consumer's route after */
        Py_INCREF(r);
        PyObject *done = PyObject_CallMethod(obj, "_turned", "Ik", out_seq, out_ts);
        int rerouted = c->route != r;
        Py_DECREF(r);
        if (done == NULL) return -1;
        Py_DECREF(done);
        if (rerouted) {
            PyErr_SetString(PyExc_RuntimeError, "Consumer._turned changed the consumer's route");
            return -1;
        }
        if (c->size <= 0) return 0;
        slot = (Py_ssize_t)(out_seq % (unsigned long long)c->size);
    }

    unsigned char header[MAX_HEADER];
    size_t hlen = (size_t)c->hlen;
    memcpy(header, c->header, hlen);
    header[0] |= (unsigned char)p->padding;
    header[1] |= (unsigned char)p->marker;
    put16(header + 2, out_seq);
    put32(header + 4, out_ts);
    if (c->kind == 1)
        put32(header + 16, (unsigned long)((c->prefix | p->abs24) & 0xFFFFFFFFLL));
    else if (c->kind == 2)
        put16(header + 16, (unsigned)((p->level >= 0 ? (c->prefix | p->level) : 0) & 0xFFFF));
    Py_ssize_t n = (Py_ssize_t)hlen + p->payload_len;

    /* the ring's slot: the bytearray already there when nothing else holds it, else a new one */
    PyObject *cache = c->cache;
    if (cache == NULL || !PyList_Check(cache) || slot >= PyList_GET_SIZE(cache)) {
        PyErr_SetString(PyExc_IndexError, "list assignment index out of range");
        return -1;
    }
    PyObject *kept = PyList_GET_ITEM(cache, slot);
    if (PyByteArray_CheckExact(kept) && Py_REFCNT(kept) == 1) {
        if (PyByteArray_Resize(kept, n) < 0) return -1;
    } else {
        if ((kept = PyByteArray_FromStringAndSize(NULL, n)) == NULL) return -1;
        PyList_SetItem(cache, slot, kept);  /* steals it, drops the old one */
    }
    char *packet = PyByteArray_AS_STRING(kept);
    memcpy(packet, header, hlen);
    memcpy(packet + hlen, p->payload, (size_t)p->payload_len);
    if (newest) {
        c->last_seq = out_seq;
        c->last_ts = (long long)out_ts;
        c->last_ms = p->arrival_ms;
    }

    /* RawSender.send_rtp on a shared socket: protect into the batch */
    int status = protect_into(r->batch, g_protect, r->context, g_trailer, packet, n, r->address);
    if (status < 0) return -1;
    if (status) {
        PyErr_Format(g_error, "srtp_protect failed (%d)", status);
        return -1;
    }
    if (r->batch->count == 1 && !r->batch->held) {
        PyObject *mux = Py_NewRef(r->mux);  /* the call may re-route */
        PyObject *done = PyObject_CallMethodNoArgs(mux, s_schedule_flush);
        Py_DECREF(mux);
        if (done == NULL) return -1;
        Py_DECREF(done);
    }
    c->packets += 1;
    c->bytes += n;
    return 1;
}

static int call_failed(PyObject *c) {
    PyObject *exc = take_exception();
    if (exc == NULL) return -1;  /* KeyboardInterrupt and such */
    PyObject *done = PyObject_CallMethodOneArg(c, s_failed, exc);
    Py_DECREF(exc);
    if (done == NULL) return -1;
    Py_DECREF(done);
    return 0;
}

/* The fan-out's packet: its C values, and the Python arguments of Consumer.forward, made only
 * when a consumer's Python needs them (``piece``: the payload as bytes, ``args``: the tuple). */
typedef struct {
    packet_t p;
    PyObject *piece, *args;
} fan_t;

/* Consumer.forward's arguments (borrowed from ``f``), NULL with an exception */
static PyObject *forward_args(fan_t *f) {
    if (f->args != NULL) return f->args;
    if (f->piece == NULL &&
        (f->piece = PyBytes_FromStringAndSize(f->p.payload, f->p.payload_len)) == NULL)
        return NULL;
    f->args = Py_BuildValue("(OLLLLiLOLL)", f->piece, f->p.padding, f->p.marker, f->p.seq,
                            f->p.ts, (int)f->p.level, f->p.abs24, Py_False, f->p.epoch,
                            f->p.arrival_ms);
    return f->args;
}

#define FAN_STACK 8 /* consumers held on the stack: a copy of the list without an allocation */

/* the loop of fanout(): 0, or -1 with an exception that is not one consumer's own */
static int fan_out(PyObject *consumers, fan_t *f) {
    /* iterate over a copy: a consumer's Python may close it (and remove it from the list) */
    PyObject *stack[FAN_STACK], *copy = NULL, **targets = stack;
    Py_ssize_t n = PyList_GET_SIZE(consumers);
    if (n > FAN_STACK) {
        if ((copy = PyList_GetSlice(consumers, 0, n)) == NULL) return -1;
        targets = &PyList_GET_ITEM(copy, 0);
    } else {
        for (Py_ssize_t i = 0; i < n; i++) stack[i] = Py_NewRef(PyList_GET_ITEM(consumers, i));
    }
    int result = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = targets[i];
        int r = forward_one(c, &f->p);
        if (r == 0) {
            PyObject *a = forward_args(f);
            if (a == NULL) { result = -1; break; } /* no memory: not the consumer's fault */
            PyObject *done = PyObject_CallMethodObjArgs(
                c, s_forward, PyTuple_GET_ITEM(a, 0), PyTuple_GET_ITEM(a, 1),
                PyTuple_GET_ITEM(a, 2), PyTuple_GET_ITEM(a, 3), PyTuple_GET_ITEM(a, 4),
                PyTuple_GET_ITEM(a, 5), PyTuple_GET_ITEM(a, 6), PyTuple_GET_ITEM(a, 7),
                PyTuple_GET_ITEM(a, 8), PyTuple_GET_ITEM(a, 9), NULL);
            if (done != NULL) { Py_DECREF(done); continue; }
            r = -1;
        }
        if (r < 0 && call_failed(c) < 0) { result = -1; break; }
    }
    if (copy != NULL) Py_DECREF(copy);
    else for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(stack[i]);
    return result;
}

static PyObject *fanout(PyObject *self, PyObject *args) {
    PyObject *consumers, *fargs;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &consumers, &PyTuple_Type, &fargs))
        return NULL;
    if (PyTuple_GET_SIZE(fargs) != 10 || !PyBytes_Check(PyTuple_GET_ITEM(fargs, 0))) {
        PyErr_SetString(PyExc_TypeError, "fanout: (payload: bytes, ...) of 10 arguments");
        return NULL;
    }
    PyObject **a = &PyTuple_GET_ITEM(fargs, 0);
    fan_t f = {
        {PyBytes_AS_STRING(a[0]), PyBytes_GET_SIZE(a[0]),
         PyLong_AsLongLong(a[1]), PyLong_AsLongLong(a[2]), PyLong_AsLongLong(a[3]),
         PyLong_AsLongLong(a[4]), PyLong_AsLongLong(a[5]), PyLong_AsLongLong(a[6]),
         PyLong_AsLongLong(a[8]), PyLong_AsLongLong(a[9])},
        a[0], fargs,
    };
    if (PyErr_Occurred() || fan_out(consumers, &f) < 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- the plain case of Producer.receive (sfu.producer) -------------------------------------
 *
 * ProducerBase: sfu.producer.Producer's base class, the fields receive() reads and writes per
 * packet as C members. receive(producer, data, b0, b1, seq, ts, offset, arrival_ms) -> True when
 * it took the packet the way Producer.receive would have: the next sequence number of a known
 * source, not oversized, not policed away, no NACK retry due, its audio level read, and for
 * video no keyframe starting (a packet inside the GOP run being cached is appended to it, or
 * ends it, as Producer._cache_gop does); then it fans the packet out. False, with nothing
 * changed, for everything else: Producer.receive's Python, the reference, does it. */

static long long g_max_payload = -1;  /* sfu.forwarder.MAX_FORWARDED_PAYLOAD; -1: not configured */
static long long g_gop_packets, g_gop_ms;  /* sfu.producer.GOP_MAX_PACKETS, GOP_MAX_AGE_MS */
static PyObject *s_due_ms;

typedef struct {
    PyObject_HEAD
    long long packets, bytes, last_arrival_ms, base_seq, max_seq, cycles, transit, bucket_ms,
        level_sum, level_count, audio_level_id, waiting, epoch, clock_per_ms, keyframe_kind,
        gop_ms, gop_ts, gop_seq;
    double jitter, tokens, bytes_per_ms, bucket_size;
    char caching;
    PyObject *gop, *consumers, *nacks;
} ProducerBase;

static int pb_traverse(ProducerBase *p, visitproc visit, void *arg) {
    Py_VISIT(p->gop); Py_VISIT(p->consumers); Py_VISIT(p->nacks);
    return 0;
}

static int pb_clear(ProducerBase *p) {
    Py_CLEAR(p->gop); Py_CLEAR(p->consumers); Py_CLEAR(p->nacks);
    return 0;
}

static void pb_dealloc(ProducerBase *p) {
    PyObject_GC_UnTrack(p);
    pb_clear(p);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyMemberDef pb_members[] = {
    {"packets", T_LONGLONG, offsetof(ProducerBase, packets), 0, NULL},
    {"bytes", T_LONGLONG, offsetof(ProducerBase, bytes), 0, NULL},
    {"last_arrival_ms", T_LONGLONG, offsetof(ProducerBase, last_arrival_ms), 0, NULL},
    {"_base_seq", T_LONGLONG, offsetof(ProducerBase, base_seq), 0, NULL},
    {"_max_seq", T_LONGLONG, offsetof(ProducerBase, max_seq), 0, NULL},
    {"_cycles", T_LONGLONG, offsetof(ProducerBase, cycles), 0, NULL},
    {"_transit", T_LONGLONG, offsetof(ProducerBase, transit), 0, NULL},
    {"_bucket_ms", T_LONGLONG, offsetof(ProducerBase, bucket_ms), 0, NULL},
    {"level_sum", T_LONGLONG, offsetof(ProducerBase, level_sum), 0, NULL},
    {"level_count", T_LONGLONG, offsetof(ProducerBase, level_count), 0, NULL},
    {"audio_level_id", T_LONGLONG, offsetof(ProducerBase, audio_level_id), 0, NULL},
    {"waiting_for_keyframe", T_LONGLONG, offsetof(ProducerBase, waiting), 0, NULL},
    {"epoch", T_LONGLONG, offsetof(ProducerBase, epoch), 0, NULL},
    {"_clock_per_ms", T_LONGLONG, offsetof(ProducerBase, clock_per_ms), 0, NULL},
    {"_keyframe_kind", T_LONGLONG, offsetof(ProducerBase, keyframe_kind), 0,
     "how receive() finds a keyframe start: 1 VP8, 2 H.264, else it leaves the packet to Python"},
    {"_gop_ms", T_LONGLONG, offsetof(ProducerBase, gop_ms), 0, NULL},
    {"_gop_ts", T_LONGLONG, offsetof(ProducerBase, gop_ts), 0, NULL},
    {"_gop_seq", T_LONGLONG, offsetof(ProducerBase, gop_seq), 0, NULL},
    {"_jitter", T_DOUBLE, offsetof(ProducerBase, jitter), 0, NULL},
    {"_tokens", T_DOUBLE, offsetof(ProducerBase, tokens), 0, NULL},
    {"_bytes_per_ms", T_DOUBLE, offsetof(ProducerBase, bytes_per_ms), 0, NULL},
    {"_bucket_size", T_DOUBLE, offsetof(ProducerBase, bucket_size), 0, NULL},
    {"_caching", T_BOOL, offsetof(ProducerBase, caching), 0, NULL},
    {"_gop", T_OBJECT, offsetof(ProducerBase, gop), 0, NULL},
    {"consumers", T_OBJECT_EX, offsetof(ProducerBase, consumers), 0, NULL},
    {"_nacks", T_OBJECT_EX, offsetof(ProducerBase, nacks), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ProducerBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fastsend.ProducerBase",
    .tp_basicsize = sizeof(ProducerBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "sfu.producer.Producer's per-packet state, in C for receive()",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)pb_dealloc,
    .tp_traverse = (traverseproc)pb_traverse,
    .tp_clear = (inquiry)pb_clear,
    .tp_members = pb_members,
};

/* sfu.forwarder.find_extension's value's first byte: >= 0, -1 when absent, -2 when Python would
 * read past the packet (and raise) */
static int audio_level(const unsigned char *d, Py_ssize_t n, long long ext_id) {
    if (!(d[0] & 0x10) || !ext_id) return -1;
    Py_ssize_t start = 12 + (d[0] & 0x0F) * 4;
    if (start + 4 > n) return -2;
    if (((d[start] << 8) | d[start + 1]) != 0xBEDE) return -1;
    Py_ssize_t pos = start + 4, end = pos + (((Py_ssize_t)d[start + 2] << 8) | d[start + 3]) * 4;
    while (pos < end) {
        if (pos >= n) return -2;
        int head = d[pos];
        if (head == 0) { pos++; continue; }
        if (head >> 4 == ext_id) return pos + 1 < n ? d[pos + 1] : -2;
        if (head >> 4 == 15) return -1;
        pos += 1 + (head & 0x0F) + 1;
    }
    return -1;
}

/* sfu.forwarder.vp8_keyframe_start */
static int vp8_keyframe_start(const unsigned char *p, Py_ssize_t n) {
    if (n < 2 || !(p[0] & 0x10) || (p[0] & 0x07)) return 0;
    Py_ssize_t pos = 1;
    if (p[0] & 0x80) {
        unsigned char ext = p[1];
        pos = 2;
        if (ext & 0x80) {
            if (pos >= n) return 0;
            pos += (p[pos] & 0x80) ? 2 : 1;
        }
        if (ext & 0x40) pos++;
        if (ext & 0x30) pos++;
    }
    return pos < n && !(p[pos] & 0x01);
}

/* sfu.forwarder.h264_keyframe_start: an IDR slice or an SPS, alone, in a STAP-A or starting an
 * FU-A (RFC 6184) */
static int h264_keyframe_nal(unsigned char b) { return (b & 0x1F) == 5 || (b & 0x1F) == 7; }

static int h264_keyframe_start(const unsigned char *p, Py_ssize_t n) {
    if (n < 1) return 0;
    int nal = p[0] & 0x1F;
    if (nal == 5 || nal == 7) return 1;
    if (nal == 24) {
        for (Py_ssize_t pos = 1; pos + 2 < n; pos += 2 + ((p[pos] << 8) | p[pos + 1]))
            if (h264_keyframe_nal(p[pos + 2])) return 1;
        return 0;
    }
    return nal == 28 && n > 1 && (p[1] & 0x80) && h264_keyframe_nal(p[1]);
}

/* receive() on C values: 1 taken, 0 for Producer.receive's Python, -1 on an exception. Also
 * sfu._ingress's way in (the capsule _receive_capi), for a packet whose handler is
 * Producer.receive: no Python frame, no int objects. */
static int receive_packet(PyObject *producer, PyObject *data, long long b0, long long b1,
                          long long seq, long long ts, long long offset, long long arrival_ms) {
    if (!PyObject_TypeCheck(producer, &ProducerBaseType) || !PyBytes_CheckExact(data)) return 0;
    ProducerBase *p = (ProducerBase *)producer;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (g_max_payload < 0 || offset < 12 || offset > size || size - offset > g_max_payload ||
        p->base_seq < 0 || ((seq - p->max_seq) & 0xFFFF) != 1 || p->consumers == NULL ||
        !PyList_Check(p->consumers))
        return 0;
    double tokens = 0;
    if (p->bytes_per_ms) {
        tokens = p->tokens + (double)(arrival_ms - p->bucket_ms) * p->bytes_per_ms;
        if (p->bucket_size < tokens) tokens = p->bucket_size;
        if (tokens < (double)size) return 0;  /* policed: counted in Python */
    }
    if (p->nacks != NULL) {
        PyObject *due = PyObject_GetAttr(p->nacks, s_due_ms);
        if (due == NULL) return -1;
        long long due_ms = PyLong_AsLongLong(due);
        Py_DECREF(due);
        if (due_ms == -1 && PyErr_Occurred()) return -1;
        if (due_ms && arrival_ms >= due_ms) return 0;
    }
    int level = -1;
    if (p->audio_level_id) {
        level = audio_level(d, size, p->audio_level_id);
        if (level == -2) return 0;
    }
    const unsigned char *payload = d + offset;
    Py_ssize_t payload_len = size - offset;
    if (p->caching) {
        /* a keyframe's start (a new run, its time on the scheduler's clock) is Python's */
        if (p->keyframe_kind == 1) {
            if (vp8_keyframe_start(payload, payload_len)) return 0;
        } else if (p->keyframe_kind == 2) {
            if (h264_keyframe_start(payload, payload_len)) return 0;
        } else {
            return 0;
        }
        if (p->gop == NULL || (p->gop != Py_None && !PyList_CheckExact(p->gop))) return 0;
    } else if (p->waiting > 0) {
        return 0;
    }

    /* Producer.receive from here on, all of it */
    if (p->bytes_per_ms) {
        p->bucket_ms = arrival_ms;
        p->tokens = tokens - (double)size;
    }
    p->packets += 1;
    p->bytes += size;
    p->last_arrival_ms = arrival_ms;
    if (seq < p->max_seq) p->cycles += 0x10000;
    p->max_seq = seq;
    long long transit = arrival_ms * p->clock_per_ms - ts;
    long long delta = transit - p->transit;
    p->transit = transit;
    p->jitter += ((double)(delta > 0 ? delta : -delta) - p->jitter) / 16;
    if (level >= 0) {
        p->level_sum += level & 0x7F;
        p->level_count += 1;
    }
    fan_t f = {
        {(const char *)payload, payload_len, b0 & 0x20, b1 & 0x80, seq, ts, level,
         (arrival_ms * 262144 / 1000) & 0xFFFFFF, p->epoch, arrival_ms},
        NULL, NULL,
    };
    int r = 0;
    if (p->caching && p->gop != Py_None) {  /* Producer._cache_gop, past a keyframe's start */
        if (PyList_GET_SIZE(p->gop) < g_gop_packets && arrival_ms - p->gop_ms <= g_gop_ms) {
            /* one bytes object for the GOP and the consumers' Python, as Producer.receive has */
            f.piece = PyBytes_FromStringAndSize((const char *)payload, payload_len);
            PyObject *kept = f.piece == NULL ? NULL
                : Py_BuildValue("(OLLLL)", f.piece, b0 & 0x20, b1 & 0x80, seq, ts);
            r = kept == NULL ? -1 : PyList_Append(p->gop, kept);
            Py_XDECREF(kept);
        } else {
            Py_SETREF(p->gop, Py_NewRef(Py_None));
        }
    }
    if (r == 0) {
        /* (the payload stays in ``data``, which the caller holds, all through the fan-out) */
        PyObject *consumers = Py_NewRef(p->consumers);
        r = fan_out(consumers, &f);
        Py_DECREF(consumers);
    }
    Py_XDECREF(f.piece);
    Py_XDECREF(f.args);
    return r < 0 ? -1 : 1;
}

static PyObject *receive(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8 || !PyObject_TypeCheck(args[0], &ProducerBaseType) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "receive(producer, data, b0, b1, seq, ts, offset, arrival_ms)");
        return NULL;
    }
    long long b0 = PyLong_AsLongLong(args[2]), b1 = PyLong_AsLongLong(args[3]),
              seq = PyLong_AsLongLong(args[4]), ts = PyLong_AsLongLong(args[5]),
              offset = PyLong_AsLongLong(args[6]), arrival_ms = PyLong_AsLongLong(args[7]);
    if (PyErr_Occurred()) return NULL;
    int taken = receive_packet(args[0], args[1], b0, b1, seq, ts, offset, arrival_ms);
    if (taken < 0) return NULL;
    return PyBool_FromLong(taken);
}

static PyObject *configure_receive(PyObject *self, PyObject *args) {
    long long max_payload, gop_packets, gop_ms;
    if (!PyArg_ParseTuple(args, "LLL", &max_payload, &gop_packets, &gop_ms)) return NULL;
    g_max_payload = max_payload;
    g_gop_packets = gop_packets;
    g_gop_ms = gop_ms;
    Py_RETURN_NONE;
}


/* ring_move(cache, resent, size, out_seq) -> (cache, resent): Consumer._resize's move of its
 * NACK ring (and when each packet was last resent) to ``size`` slots, where two land on one slot
 * the newer staying: it runs at most once a turn of the ring, but as a Python loop over every
 * slot it cost as much as the turn's fan-outs of a subscriber whose rate moves. */
static PyObject *ring_move(PyObject *self, PyObject *args) {
    PyObject *cache, *resent_in;
    Py_ssize_t size;
    unsigned int out_seq;
    if (!PyArg_ParseTuple(args, "O!O!nI", &PyList_Type, &cache, &PyList_Type, &resent_in, &size,
                          &out_seq))
        return NULL;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "ring_move: size must be positive");
        return NULL;
    }
    PyObject *moved = PyList_New(size), *resent = PyList_New(size);
    unsigned int *ages = PyMem_Malloc((size_t)size * sizeof(unsigned int));
    PyObject *zero = PyLong_FromLong(0);
    if (moved == NULL || resent == NULL || ages == NULL || zero == NULL) goto fail;
    for (Py_ssize_t i = 0; i < size; i++) {
        PyList_SET_ITEM(moved, i, Py_NewRef(Py_None));
        PyList_SET_ITEM(resent, i, Py_NewRef(zero));
        ages[i] = 0x10000;
    }
    Py_ssize_t n = PyList_GET_SIZE(cache);
    if (PyList_GET_SIZE(resent_in) < n) n = PyList_GET_SIZE(resent_in);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *packet = PyList_GET_ITEM(cache, i);
        if (packet == Py_None) continue;
        const unsigned char *data;
        Py_ssize_t len;
        if (PyBytes_Check(packet)) {
            data = (const unsigned char *)PyBytes_AS_STRING(packet);
            len = PyBytes_GET_SIZE(packet);
        } else if (PyByteArray_Check(packet)) {
            data = (const unsigned char *)PyByteArray_AS_STRING(packet);
            len = PyByteArray_GET_SIZE(packet);
        } else {
            PyErr_SetString(PyExc_TypeError, "ring_move: a packet is bytes or bytearray");
            goto fail;
        }
        if (len < 4) {
            PyErr_SetString(PyExc_ValueError, "ring_move: a packet shorter than an RTP header");
            goto fail;
        }
        unsigned int seq = ((unsigned int)data[2] << 8) | data[3];
        Py_ssize_t slot = (Py_ssize_t)(seq % (size_t)size);
        unsigned int age = (out_seq - seq) & 0xFFFF;
        if (age >= ages[slot]) continue;
        ages[slot] = age;
        PyObject *last = PyList_GET_ITEM(resent_in, i);
        unsigned long long value = PyLong_AsUnsignedLongLongMask(last);
        if (value == (unsigned long long)-1 && PyErr_Occurred()) goto fail;
        Py_SETREF(PyList_GET_ITEM(moved, slot), Py_NewRef(packet));
        Py_SETREF(PyList_GET_ITEM(resent, slot),
                  Py_NewRef((value & 0xFFFF) == seq ? last : zero));
    }
    PyMem_Free(ages);
    Py_DECREF(zero);
    return Py_BuildValue("(NN)", moved, resent);
fail:
    PyMem_Free(ages);
    Py_XDECREF(zero);
    Py_XDECREF(moved);
    Py_XDECREF(resent);
    return NULL;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(protect_fn, max_trailer, connected_state, error) for fanout()"},
    {"receive", (PyCFunction)(void (*)(void))receive, METH_FASTCALL,
     "receive(producer, data, b0, b1, seq, ts, offset, arrival_ms) -> True when it took the "
     "packet (Producer.receive's plain case), False when Producer.receive must"},
    {"configure_receive", configure_receive, METH_VARARGS,
     "configure_receive(max_forwarded_payload, gop_max_packets, gop_max_age_ms) for receive()"},
    {"ring_move", ring_move, METH_VARARGS,
     "ring_move(cache, resent, size, out_seq) -> (cache, resent): Consumer._resize's move"},
    {"fanout", fanout, METH_VARARGS,
     "fanout(consumers, (payload, padding, marker, seq, ts, level, abs24, keyframe, epoch, "
     "arrival_ms)): Consumer.forward for each consumer, in C where it is the plain case"},
    {"unprotect", unprotect, METH_VARARGS,
     "unprotect(unprotect_fn, session, owner, packet) -> plaintext, or -status"},
    {"protect_queue", protect_queue, METH_VARARGS,
     "protect_queue(protect, session, owner, max_trailer, packet, address, batch) -> "
     "len(batch), or -status"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastsend", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastsend(void) {
    if ((s_state = PyUnicode_InternFromString("_state")) == NULL) return NULL;
    if ((s_tx_srtp = PyUnicode_InternFromString("_tx_srtp")) == NULL) return NULL;
    if ((s_writable = PyUnicode_InternFromString("writable")) == NULL) return NULL;
    if ((s_schedule_flush = PyUnicode_InternFromString("schedule_flush")) == NULL) return NULL;
    if ((s_forward = PyUnicode_InternFromString("forward")) == NULL) return NULL;
    if ((s_failed = PyUnicode_InternFromString("failed")) == NULL) return NULL;
    if ((s_fast = PyUnicode_InternFromString("_fast")) == NULL) return NULL;
    if ((s_due_ms = PyUnicode_InternFromString("due_ms")) == NULL) return NULL;
    if ((s_one = PyLong_FromLong(1)) == NULL) return NULL;
    if (PyType_Ready(&AddressType) < 0 || PyType_Ready(&BatchType) < 0 ||
        PyType_Ready(&RouteType) < 0 ||
        PyType_Ready(&ConsumerBaseType) < 0 || PyType_Ready(&ProducerBaseType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Address", (PyObject *)&AddressType) < 0 ||
        PyModule_AddObjectRef(m, "Batch", (PyObject *)&BatchType) < 0 ||
        PyModule_AddObjectRef(m, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObjectRef(m, "ConsumerBase", (PyObject *)&ConsumerBaseType) < 0 ||
        PyModule_AddObjectRef(m, "ProducerBase", (PyObject *)&ProducerBaseType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *capi = PyCapsule_New((void *)receive_packet, "sfu._fastsend._receive_capi", NULL);
    int added = capi == NULL ? -1 : PyModule_AddObjectRef(m, "_receive_capi", capi);
    Py_XDECREF(capi);
    PyObject *batch = added < 0 ? NULL
        : PyCapsule_New((void *)&batch_capi, "sfu._fastsend._batch_capi", NULL);
    added = batch == NULL ? -1 : PyModule_AddObjectRef(m, "_batch_capi", batch);
    Py_XDECREF(batch);
    if (added < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
