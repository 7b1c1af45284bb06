"""The way in: port-forward to the shadow pod, SSH over it, reverse forwards, session keys.

It offers a function that opens a flow (an SSH direct-tcpip channel); the
SOCKS5 server and the TCP stack in ``ktpy.net`` are handed that function by
the session and never import this package.
"""
