"""The one vocabulary of ktpy's protocol cores: events in, actions out.

The TUN stack's TCP, the SOCKS5 handshake, the DNS decision and the
port-forward's WebSocket frames are pure state machines (mitmproxy's layers
and commands are the model): an I/O wrapper feeds them what happened and
carries out what they return, in order. Each core has two entry points:

- ``receive(data, ...)``: bytes from the peer, the side whose bytes the core
  parses (the kernel through the TUN device, the SOCKS client, the DNS client,
  the API server). The TUN stack's hot path: a packet in, no event object;
- ``handle(event, ...)``: any other ``Event``; both return a list of ``Action``.

Names follow one rule, so a word means one thing in every core. Bare verbs act
on the peer (``Send`` bytes to it, ``Close`` it); ``...Flow`` words are about
the app side, the flow a core asks its wrapper to open (an SSH channel):
``OpenFlow`` and ``CloseFlow`` as actions, ``FlowOpened``,
``FlowOpenFailed``, ``FlowData``, ``FlowEnd``, ``FlowFailed`` as events.
``Deliver`` hands the peer's bytes to the app side, ``DeliverEnd`` its end, and
``Delivered`` reports them written. Concepts only one core has keep their own
name.

============  ==============================  =====================================
core          events (``handle``)             actions
============  ==============================  =====================================
TCP           bytes: a packet (``receive``);  ``Send`` (a packet to the TUN device),
(net.tcp)     ``FlowOpened``,                 ``OpenFlow``, ``Deliver``,
              ``FlowOpenFailed``,             ``DeliverEnd``, ``ResumeReading``
              ``FlowData``, ``FlowEnd``,      (room in the send buffer again),
              ``FlowFailed``, ``Delivered``;  ``CloseFlow``
              the stack's own rhythm:
              ``flush``, ``expire``,
              ``abort_all``
SOCKS5        bytes (``receive``);            ``Send``, ``OpenFlow``,
(net.socks5)  ``FlowOpened``,                 ``StartRelay`` (copy both ways from
              ``FlowOpenFailed``              now on), ``Close``
DNS           bytes: a query (``receive``);   ``Send`` (the reply), ``AskCluster``,
(net.dns)     ``ClusterAnswered``,            ``AskUpstream`` (exchange a query
              ``ClusterFailed``,              with a resolver, then report the
              ``UpstreamAnswered``,           outcome), ``Collision`` (tell the
              ``UpstreamFailed``              user once: the cluster has this
                                              public-looking name), ``Ignore``
                                              (send nothing)
WebSocket     bytes: frames (``receive``)     ``Send`` (a frame to the server),
(tunnel.                                      ``Deliver``, ``DeliverEnd``,
portforward)                                  ``ReportError`` (the error channel),
                                              ``Violation`` (a frame RFC 6455
                                              forbids: the stream ends)
============  ==============================  =====================================

Events and actions are frozen, slotted dataclasses: a core's output can be
compared whole in tests (one Playbook helper drives every core), and creating
one costs no more than the tuple it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, for a core to hear of."""


@dataclass(frozen=True, slots=True)
class Action:
    """Something a core asks its I/O wrapper to do."""
