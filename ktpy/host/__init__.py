"""The one place that changes the host: TUN device, routes, resolver settings.

Every mutation is written to the journal (``journal``), with its undo
(``undo``), before it is made, so that ``ktpy clean --local`` (``recovery``)
can replay the undos after a ``kill -9``. ``network`` opens and closes the
TUN network in order (survey, open_network, point_resolver, tear_down); ``links``,
``routes``, ``resolver`` and ``resolvconf`` the parts; ``snapshot`` pictures
what could change, for tests and ``ktpy doctor``. Also home to read-only facts
about this machine's processes (``procs``).
"""
