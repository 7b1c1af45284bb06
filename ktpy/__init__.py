"""ktpy: put a developer's machine inside a Kubernetes cluster.

A shadow pod in the cluster, an SSH tunnel to it through the API server, and
the plumbing on both ends (SOCKS5, a TUN device, DNS, reverse forwards).
"""

__version__ = "0.1.0"
