/* sfu._fastsend: a whole batch of UDP datagrams in one sendmmsg(2) call.
 *
 * send_batch(fd, [data, ...], [(host, port), ...]) -> the number of datagrams the kernel took.
 * Two lists rather than a list of pairs: a pair per datagram would be one more object for the
 * garbage collector to count, per packet per subscriber.
 * The same contract as sfu.fastsend.send_batch_python: a full socket buffer (EAGAIN) ends the
 * batch, what is left is dropped; any other error drops that one datagram and goes on.
 * Built by setup.py at install time (optional: sfu/fastsend.py falls back to Python).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define CHUNK 64

static int fill_address(PyObject *addr, struct sockaddr_storage *out, socklen_t *len) {
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

static PyObject *send_batch(PyObject *self, PyObject *args) {
    int fd;
    PyObject *datas, *addresses;
    if (!PyArg_ParseTuple(args, "iO!O!", &fd, &PyList_Type, &datas, &PyList_Type, &addresses))
        return NULL;
    struct mmsghdr msgs[CHUNK];
    struct iovec iov[CHUNK];
    struct sockaddr_storage addrs[CHUNK];
    Py_ssize_t n = PyList_GET_SIZE(datas), i = 0;
    if (PyList_GET_SIZE(addresses) < n) n = PyList_GET_SIZE(addresses);
    long sent = 0;
    while (i < n) {
        int k = 0;
        for (; i < n && k < CHUNK; i++) {
            PyObject *data = PyList_GET_ITEM(datas, i);
            if (!PyBytes_Check(data)) continue;
            socklen_t addrlen;
            if (fill_address(PyList_GET_ITEM(addresses, i), &addrs[k], &addrlen) < 0) continue;
            iov[k].iov_base = PyBytes_AS_STRING(data);
            iov[k].iov_len = (size_t)PyBytes_GET_SIZE(data);
            memset(&msgs[k].msg_hdr, 0, sizeof(msgs[k].msg_hdr));
            msgs[k].msg_hdr.msg_name = &addrs[k];
            msgs[k].msg_hdr.msg_namelen = addrlen;
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            k++;
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

/* libsrtp 2's srtp_protect, reached through the address pylibsrtp's cffi module gives for it:
 * the extension links against nothing but libc. */
typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

/* protect_queue(protect, session, owner, max_trailer, packet, address, datagrams, addresses)
 *   -> len(datagrams) after queueing, or -status when srtp_protect refused the packet.
 * SRTP-protects ``packet`` with libsrtp's ``session`` straight into a new bytes object (one
 * allocation, one copy) and appends it and ``address`` to the batch lists. ``owner`` is not
 * used: it is the object whose life keeps ``session`` valid (pylibsrtp's Session), passed so
 * that whoever binds the first arguments (functools.partial) holds it too. */
static PyObject *protect_queue(PyObject *self, PyObject *args) {
    unsigned long long fn, session;
    Py_buffer packet;
    int trailer;
    PyObject *owner, *address, *datagrams, *addresses;
    if (!PyArg_ParseTuple(args, "KKOiy*OO!O!", &fn, &session, &owner, &trailer, &packet, &address,
                          &PyList_Type, &datagrams, &PyList_Type, &addresses))
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, packet.len + trailer);
    if (out == NULL) { PyBuffer_Release(&packet); return NULL; }
    memcpy(PyBytes_AS_STRING(out), packet.buf, (size_t)packet.len);
    int len = (int)packet.len;
    PyBuffer_Release(&packet);
    int status = ((protect_fn)(uintptr_t)fn)((void *)(uintptr_t)session, PyBytes_AS_STRING(out), &len);
    if (status) {
        Py_DECREF(out);
        return PyLong_FromLong(-status);
    }
    if (_PyBytes_Resize(&out, len) < 0) return NULL;
    if (PyList_Append(datagrams, out) < 0) { Py_DECREF(out); return NULL; }
    Py_DECREF(out);
    if (PyList_Append(addresses, address) < 0) {
        PySequence_DelItem(datagrams, PyList_GET_SIZE(datagrams) - 1);
        return NULL;
    }
    return PyLong_FromSsize_t(PyList_GET_SIZE(datagrams));
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
 * sfu.consumer.Consumer.forward and sfu.aiortc_hooks.RawSender.send_rtp do, on their own
 * attributes: rewrite the header, keep the unprotected packet in the consumer's NACK ring,
 * SRTP-protect into the shared socket's batch, count. Whatever is not the plain case (no fast
 * sender, paused for a keyframe, a new epoch, a new route or SRTP session, a closed gate, the
 * ring turning, configure() not called) goes to the consumer's own Python, which stays the
 * reference: consumer.forward. An exception from one consumer goes to its consumer.failed(exc), and the
 * fan-out carries on. configure(protect_fn, connected, error) sets libsrtp's srtp_protect, the
 * DTLS state that means connected and the exception srtp_protect failures raise. */

static unsigned long long g_protect;
static int g_trailer;
static PyObject *g_connected, *g_error;
static PyObject *s_fast_sender, *s_paused, *s_waiting, *s_epoch_, *s_seq_offset, *s_ts_offset,
    *s_fast_header, *s_last_seq,
    *s_last_ts, *s_last_ms, *s_size, *s_cache, *s_packets, *s_bytes, *s_forward, *s_failed,
    *s_dtls, *s_state, *s_nominated, *s_fast, *s_writable,
    *s_tx_srtp, *s_schedule_flush,
    *s_one;

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

/* a borrowed-or-new attribute helper: new reference, NULL with an exception set */
#define GET(obj, name) PyObject_GetAttr((obj), (name))

static int truth(PyObject *obj, PyObject *name) {
    PyObject *v = GET(obj, name);
    if (v == NULL) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* A Consumer's plain attributes straight from its __dict__ (borrowed; NULL, without an
 * exception, when it is not there): PyObject_GetAttr's type lookup and descriptor checks cost
 * more than the bytecode they replace. */
static long long dict_ll(PyObject *d, PyObject *name, int *bad) {
    PyObject *v = PyDict_GetItemWithError(d, name);
    if (v == NULL || !PyLong_CheckExact(v)) { *bad = 1; return -1; }
    long long r = PyLong_AsLongLong(v);
    if (r == -1 && PyErr_Occurred()) { PyErr_Clear(); *bad = 1; }
    return r;
}

static int dict_set_ll(PyObject *d, PyObject *name, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int r = PyDict_SetItem(d, name, v);
    Py_DECREF(v);
    return r;
}

/* The sender's state when it can take the packet into its batch as it is: 1 with the address,
 * batch lists, mux and libsrtp context filled in (new references), 0 when RawSender.send_rtp
 * must look (route, session, gate), -1 on an exception. */
typedef struct {
    PyObject *addr, *datagrams, *addresses, *mux;
    unsigned long long context;
} route_t;

static void route_clear(route_t *r) {
    Py_CLEAR(r->addr); Py_CLEAR(r->datagrams); Py_CLEAR(r->addresses); Py_CLEAR(r->mux);
}

static int route_of(PyObject *sender, route_t *r) {
    int ok = 0;
    PyObject *dtls = NULL, *state = NULL, *nominated = NULL, *fast = NULL, *tx = NULL;
    if ((dtls = GET(sender, s_dtls)) == NULL) goto fail;
    if ((state = GET(dtls, s_state)) == NULL) goto fail;
    if (state != g_connected) goto done;
    /* RawSender._fast: (pair, session, context, address, datagrams, addresses, mux) */
    if ((fast = GET(sender, s_fast)) == NULL) goto fail;
    if (!PyTuple_Check(fast) || PyTuple_GET_SIZE(fast) != 7) goto done;
    if ((nominated = GET(sender, s_nominated)) == NULL) goto fail;
    if (!PyDict_Check(nominated) ||
        PyDict_GetItemWithError(nominated, s_one) != PyTuple_GET_ITEM(fast, 0)) {
        if (PyErr_Occurred()) goto fail;
        goto done;
    }
    if ((tx = GET(dtls, s_tx_srtp)) == NULL) goto fail;
    if (tx != PyTuple_GET_ITEM(fast, 1)) goto done;
    PyObject *mux = PyTuple_GET_ITEM(fast, 6);
    int writable = truth(mux, s_writable);
    if (writable < 0) goto fail;
    if (!writable) goto done;
    r->context = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(fast, 2));
    if (PyErr_Occurred()) goto fail;
    r->datagrams = Py_NewRef(PyTuple_GET_ITEM(fast, 4));
    r->addresses = Py_NewRef(PyTuple_GET_ITEM(fast, 5));
    if (!PyList_Check(r->datagrams) || !PyList_Check(r->addresses)) goto done;
    r->addr = Py_NewRef(PyTuple_GET_ITEM(fast, 3));
    r->mux = Py_NewRef(mux);
    ok = 1;
    goto done;
fail:
    ok = -1;
done:
    Py_XDECREF(dtls); Py_XDECREF(state); Py_XDECREF(nominated); Py_XDECREF(fast); Py_XDECREF(tx);
    if (ok != 1) route_clear(r);
    return ok;
}

static void put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static void put32(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

#define MAX_HEADER 64

/* One consumer: 1 done, 0 for its Python, -1 on an exception (for consumer.failed). */
static int forward_one(PyObject *c, PyObject **a, const char *payload, Py_ssize_t payload_len,
                       int trailer) {
    int result = -1;
    route_t r = {0};
    PyObject *sender = NULL, *d = NULL, *packet = NULL, *out = NULL;
    int bad = 0;
    if (!g_protect) return 0;
    /* a listener that is not a Consumer with a RawSender (a recording's, a test's) */
    if (_PyObject_LookupAttr(c, s_fast_sender, &sender) < 0) goto end;
    if (sender == NULL || sender == Py_None) { result = 0; goto end; }
    if ((d = PyObject_GenericGetDict(c, NULL)) == NULL) goto end;
    PyObject *flag = PyDict_GetItemWithError(d, s_paused);
    if (flag == Py_True) { result = 1; goto end; }  /* Consumer.forward's first line */
    if (flag != Py_False) { result = PyErr_Occurred() ? -1 : 0; goto end; }
    flag = PyDict_GetItemWithError(d, s_waiting);
    if (flag != Py_False) { result = PyErr_Occurred() ? -1 : 0; goto end; }
    PyObject *epoch = PyDict_GetItemWithError(d, s_epoch_);
    if (epoch == NULL) { result = PyErr_Occurred() ? -1 : 0; goto end; }
    int same = PyObject_RichCompareBool(epoch, a[8], Py_EQ);
    if (same < 0) goto end;
    if (!same) { result = 0; goto end; }
    int routed = route_of(sender, &r);
    if (routed < 0) goto end;
    if (!routed) { result = 0; goto end; }

    long long seq_offset = dict_ll(d, s_seq_offset, &bad), ts_offset = dict_ll(d, s_ts_offset, &bad),
              last_seq = dict_ll(d, s_last_seq, &bad), size = dict_ll(d, s_size, &bad);
    if (bad || size <= 0) { result = PyErr_Occurred() ? -1 : 0; goto end; }
    long long seq = PyLong_AsLongLong(a[3]), ts = PyLong_AsLongLong(a[4]),
              padding = PyLong_AsLongLong(a[1]), marker = PyLong_AsLongLong(a[2]);
    if (PyErr_Occurred()) goto end;
    unsigned out_seq = (unsigned)((seq + seq_offset) & 0xFFFF);
    unsigned long out_ts = (unsigned long)((ts + ts_offset) & 0xFFFFFFFFLL);
    if (((out_seq - (unsigned)last_seq) & 0xFFFF) < 0x8000 && !(out_seq % (unsigned long long)size)) {
        result = 0;  /* the ring turns: Consumer._turned may resize it, in Python */
        goto end;
    }

    /* Consumer._fast_header: (template, kind, prefix), made by Consumer.configure */
    PyObject *tail = PyDict_GetItemWithError(d, s_fast_header);
    if (tail == NULL || !PyTuple_Check(tail) || PyTuple_GET_SIZE(tail) != 3 ||
        !PyBytes_Check(PyTuple_GET_ITEM(tail, 0))) { result = 0; goto end; }
    PyObject *template = PyTuple_GET_ITEM(tail, 0);
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(tail, 1));
    long long prefix = PyLong_AsLongLong(PyTuple_GET_ITEM(tail, 2));
    if (PyErr_Occurred()) goto end;
    size_t hlen = (size_t)PyBytes_GET_SIZE(template);
    if (hlen < 12 || hlen > MAX_HEADER || (kind && hlen < 20)) { result = 0; goto end; }
    unsigned char header[MAX_HEADER];
    memcpy(header, PyBytes_AS_STRING(template), hlen);
    header[0] |= (unsigned char)padding;
    header[1] |= (unsigned char)marker;
    put16(header + 2, out_seq);
    put32(header + 4, out_ts);
    if (kind == 1) {
        long long abs24 = PyLong_AsLongLong(a[6]);
        put32(header + 16, (unsigned long)((prefix | abs24) & 0xFFFFFFFFLL));
    } else if (kind == 2) {
        long long level = PyLong_AsLongLong(a[5]);
        put16(header + 16, (unsigned)((level >= 0 ? (prefix | level) : 0) & 0xFFFF));
    }
    if (PyErr_Occurred()) goto end;

    Py_ssize_t n = (Py_ssize_t)hlen + payload_len;
    if ((packet = PyBytes_FromStringAndSize(NULL, n)) == NULL) goto end;
    memcpy(PyBytes_AS_STRING(packet), header, hlen);
    memcpy(PyBytes_AS_STRING(packet) + hlen, payload, (size_t)payload_len);

    /* Consumer.forward: the stream's newest packet moves its last sequence/timestamp/time */
    if (((out_seq - (unsigned)last_seq) & 0xFFFF) < 0x8000) {
        if (dict_set_ll(d, s_last_seq, out_seq) < 0 || dict_set_ll(d, s_last_ts, (long long)out_ts) < 0 ||
            PyDict_SetItem(d, s_last_ms, a[9]) < 0)
            goto end;
    }
    PyObject *cache = PyDict_GetItemWithError(d, s_cache);
    if (cache == NULL || !PyList_Check(cache) || (Py_ssize_t)(out_seq % (unsigned long long)size) >= PyList_GET_SIZE(cache)) {
        PyErr_SetString(PyExc_IndexError, "list assignment index out of range");
        goto end;
    }
    Py_INCREF(packet);
    PyList_SetItem(cache, (Py_ssize_t)(out_seq % (unsigned long long)size), packet);

    /* RawSender.send_rtp on a shared socket: protect into the batch */
    if ((out = PyBytes_FromStringAndSize(NULL, n + trailer)) == NULL) goto end;
    memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(packet), (size_t)n);
    int len = (int)n;
    int status = ((protect_fn)(uintptr_t)g_protect)((void *)(uintptr_t)r.context,
                                                    PyBytes_AS_STRING(out), &len);
    if (status) {
        PyErr_Format(g_error, "srtp_protect failed (%d)", status);
        goto end;
    }
    if (_PyBytes_Resize(&out, len) < 0) goto end;
    if (PyList_Append(r.datagrams, out) < 0) goto end;
    if (PyList_Append(r.addresses, r.addr) < 0) {
        PySequence_DelItem(r.datagrams, PyList_GET_SIZE(r.datagrams) - 1);
        goto end;
    }
    if (PyList_GET_SIZE(r.datagrams) == 1) {
        PyObject *done = PyObject_CallMethodNoArgs(r.mux, s_schedule_flush);
        if (done == NULL) goto end;
        Py_DECREF(done);
    }
    long long packets = dict_ll(d, s_packets, &bad), bytes = dict_ll(d, s_bytes, &bad);
    if (bad) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "packets/bytes: not ints");
        goto end;
    }
    if (dict_set_ll(d, s_packets, packets + 1) < 0 || dict_set_ll(d, s_bytes, bytes + n) < 0)
        goto end;
    result = 1;
end:
    route_clear(&r);
    Py_XDECREF(sender); Py_XDECREF(d); Py_XDECREF(packet); Py_XDECREF(out);
    return result;
}

static int call_failed(PyObject *c) {
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;  /* KeyboardInterrupt and such */
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL) PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    PyObject *done = PyObject_CallMethodOneArg(c, s_failed, exc);
    Py_DECREF(exc);
    if (done == NULL) return -1;
    Py_DECREF(done);
    return 0;
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
    const char *payload = PyBytes_AS_STRING(a[0]);
    Py_ssize_t payload_len = PyBytes_GET_SIZE(a[0]);
    /* iterate over a copy: a consumer's Python may close it (and remove it from the list) */
    PyObject *targets = PyList_GetSlice(consumers, 0, PyList_GET_SIZE(consumers));
    if (targets == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(targets); i++) {
        PyObject *c = PyList_GET_ITEM(targets, i);
        int r = forward_one(c, a, payload, payload_len, g_trailer);
        if (r == 0) {
            PyObject *done = PyObject_CallMethodObjArgs(c, s_forward, a[0], a[1], a[2], a[3],
                                                        a[4], a[5], a[6], a[7], a[8], a[9], NULL);
            if (done != NULL) { Py_DECREF(done); continue; }
            r = -1;
        }
        if (r < 0 && call_failed(c) < 0) { Py_DECREF(targets); return NULL; }
    }
    Py_DECREF(targets);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(protect_fn, max_trailer, connected_state, error) for fanout()"},
    {"fanout", fanout, METH_VARARGS,
     "fanout(consumers, (payload, padding, marker, seq, ts, level, abs24, keyframe, epoch, "
     "arrival_ms)): Consumer.forward for each consumer, in C where it is the plain case"},
    {"unprotect", unprotect, METH_VARARGS,
     "unprotect(unprotect_fn, session, owner, packet) -> plaintext, or -status"},
    {"protect_queue", protect_queue, METH_VARARGS,
     "protect_queue(protect, session, owner, max_trailer, packet, address, datagrams, addresses) -> "
     "len(datagrams), or -status"},
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, [data, ...], [(host, port), ...]) -> datagrams sent, by sendmmsg(2)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastsend", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastsend(void) {
    if ((s_fast_sender = PyUnicode_InternFromString("fast_sender")) == NULL) return NULL;
    if ((s_paused = PyUnicode_InternFromString("paused")) == NULL) return NULL;
    if ((s_waiting = PyUnicode_InternFromString("_waiting")) == NULL) return NULL;
    if ((s_epoch_ = PyUnicode_InternFromString("_epoch")) == NULL) return NULL;
    if ((s_seq_offset = PyUnicode_InternFromString("_seq_offset")) == NULL) return NULL;
    if ((s_ts_offset = PyUnicode_InternFromString("_ts_offset")) == NULL) return NULL;
    if ((s_fast_header = PyUnicode_InternFromString("_fast_header")) == NULL) return NULL;
    if ((s_last_seq = PyUnicode_InternFromString("_last_seq")) == NULL) return NULL;
    if ((s_last_ts = PyUnicode_InternFromString("_last_ts")) == NULL) return NULL;
    if ((s_last_ms = PyUnicode_InternFromString("_last_ms")) == NULL) return NULL;
    if ((s_size = PyUnicode_InternFromString("_size")) == NULL) return NULL;
    if ((s_cache = PyUnicode_InternFromString("_cache")) == NULL) return NULL;
    if ((s_packets = PyUnicode_InternFromString("packets")) == NULL) return NULL;
    if ((s_bytes = PyUnicode_InternFromString("bytes")) == NULL) return NULL;
    if ((s_forward = PyUnicode_InternFromString("forward")) == NULL) return NULL;
    if ((s_failed = PyUnicode_InternFromString("failed")) == NULL) return NULL;
    if ((s_dtls = PyUnicode_InternFromString("_dtls")) == NULL) return NULL;
    if ((s_state = PyUnicode_InternFromString("_state")) == NULL) return NULL;
    if ((s_nominated = PyUnicode_InternFromString("_nominated")) == NULL) return NULL;
    if ((s_fast = PyUnicode_InternFromString("_fast")) == NULL) return NULL;
    if ((s_writable = PyUnicode_InternFromString("writable")) == NULL) return NULL;
    if ((s_tx_srtp = PyUnicode_InternFromString("_tx_srtp")) == NULL) return NULL;
    if ((s_schedule_flush = PyUnicode_InternFromString("schedule_flush")) == NULL) return NULL;
    if ((s_one = PyLong_FromLong(1)) == NULL) return NULL;
    return PyModule_Create(&module);
}
