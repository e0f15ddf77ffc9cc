"""The enforcement points, one package per protocol (``http``, ``ssh``, ``pg``).

``tether.proxy.core`` holds what every front-end shares: the services it needs and the
one way to turn an authenticated credential, a target and an action into a policy
request and a decision. Nothing outside the node imports a front-end.
"""
