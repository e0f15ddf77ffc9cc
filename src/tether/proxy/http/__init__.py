"""The HTTP broker (docs/http-broker.md): ``/t/<target>/...`` and ``<target>.<domain>``.

Import :mod:`tether.proxy.http.broker` for the broker itself; this package imports nothing,
so that ``tether.config`` can read :mod:`tether.proxy.http.config` cheaply.
"""
