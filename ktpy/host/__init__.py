"""The one place that changes the host: routes, addresses, resolver settings.

Every mutation is written to the journal, with its undo, before it is made,
so that ``ktpy clean --local`` can replay the undos after a ``kill -9``.
Also home to read-only facts about this machine's processes (``procs``).
"""
