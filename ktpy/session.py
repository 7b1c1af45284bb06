"""One session: a shadow pod, its tunnel, its heartbeat and its ordered teardown.

Not written yet. It will own the lifecycle that every command shares:
generate the session keys, create the Secret and the shadow pod, watch it to
Ready, open the port-forward and SSH, refresh heartbeats, run the command's
supervised tasks, and on exit (signal, error or a dead root task) restore
what was modified before deleting what was created.
"""
