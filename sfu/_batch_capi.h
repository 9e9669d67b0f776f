/* sfu._fastsend's Batch as sfu/_ingress.c's reader uses it at the end of its call, without a
 * Python call: the capsule sfu._fastsend._batch_capi holds one batch_capi_t. In setup.py's
 * depends and in MANIFEST.in (the sdist). */
#ifndef SFU_BATCH_CAPI_H
#define SFU_BATCH_CAPI_H

#include <Python.h>

typedef struct {
    PyTypeObject *type;                              /* sfu._fastsend.Batch */
    Py_ssize_t (*count)(PyObject *batch);            /* len(batch) */
    PyObject *(*send)(PyObject *batch, PyObject *sock); /* batch.send(sock) */
    void (*empty)(PyObject *batch);                  /* batch.clear() */
    void (*hold)(PyObject *batch, int held);         /* batch.held = held */
} batch_capi_t;

#endif
