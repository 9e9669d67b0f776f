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

static PyMethodDef methods[] = {
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

PyMODINIT_FUNC PyInit__fastsend(void) { return PyModule_Create(&module); }
