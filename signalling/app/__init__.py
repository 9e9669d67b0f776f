"""The application: ``factory.create_app`` builds every part in one place, ``wiring`` joins parts
built apart, ``cli`` is the ``expertcall`` command. The top of the control plane: it may import
every other part, and none imports it."""
