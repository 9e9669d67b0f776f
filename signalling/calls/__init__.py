"""Calls: the signalling node, the session state machine and its durable copies, expert queues,
presence, resume, the ``/ws`` socket layer, the bridge to the media plane (``sfu.api``), WHIP/WHEP
and ICE servers. May import ``core``, ``auth``, ``backends`` and, for bookings that fall due,
``bookings``; it asks billing only through ``billing_desk.BillingDesk`` and never imports it."""
