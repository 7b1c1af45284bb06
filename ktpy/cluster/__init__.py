"""Kubernetes objects: names, labels, manifests, heartbeats, clean-up selection.

``api`` is the only module that talks to the API server; everything else
here is pure and works on plain dict bodies.
"""
