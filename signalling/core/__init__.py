"""What every part of the control plane stands on: settings, the embedded SQLite and the shared
PostgreSQL, metrics, timers, resource limits, allowed origins, coded errors, the ``/ws`` message
envelope with its schemas, and the core app keys. It imports nothing else of ``signalling``."""
