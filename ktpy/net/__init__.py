"""The laptop's end of the traffic: pure protocol cores and the thin I/O
servers around them.

Pure (no sockets, no threads, no clock; events in, actions out in the
vocabulary of ktpy.sansio): ``tcp`` (the TUN stack's TCP), ``socks5`` (the
SOCKS5 handshake), ``dns`` (which names the cluster answers, and the replies),
``ip`` (packet parsing and building).

I/O: ``tun_tcp`` (a TUN device's TCP flows, relayed to flow openers) and
``tun_process`` (it, in a child process), ``socks_server``, ``dns_server``,
``forwarding`` (``ktpy forward``'s listener), ``inbound`` (cluster connections
to local ports), with the shared ``listener`` and ``relay``. They are given a
flow opener (``relay.FlowOpener``) and never import the tunnel.
"""
