/* What sfu/_ingress.c and sfu/_fastsend.c share: taking the pending exception to hand it to a
 * Python callback (the event loop's exception handler, a consumer's failed()). In setup.py's
 * depends and in MANIFEST.in (the sdist). */
#ifndef SFU_REPORT_H
#define SFU_REPORT_H

#include <Python.h>

/* The pending exception as one object, its traceback attached, the error indicator cleared; NULL
 * with it still pending when it is not an Exception (KeyboardInterrupt, SystemExit), which no
 * callback may swallow. */
static inline PyObject *take_exception(void) {
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL) PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return exc;
}

#endif
