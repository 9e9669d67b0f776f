"""The C extensions (sfu/_fastsend.c: sendmmsg for the fan-out; sfu/_ingress.c: the shared
socket's receiving side); everything else is in pyproject.toml. Optional: without a compiler or
Python's headers the install still succeeds, sfu/fastsend.py sends in Python and sfu/udp_mux.py
receives through the event loop's transport."""

from setuptools import Extension, setup

# depends: rebuilt when their shared header changes (MANIFEST.in puts it in the sdist)
setup(ext_modules=[Extension("sfu._fastsend", ["sfu/_fastsend.c"], depends=["sfu/_report.h", "sfu/_batch_capi.h"],
                             optional=True),
                   Extension("sfu._ingress", ["sfu/_ingress.c"], depends=["sfu/_report.h", "sfu/_batch_capi.h"],
                             optional=True)])
