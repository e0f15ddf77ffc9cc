"""The credential vault (encrypted secrets) and the target registry every front-end uses.

Front-ends resolve a target by name (:mod:`tether.vault.targets`), then the secret names its
credential refers to (:mod:`tether.vault.secrets`). Secret values never leave this package
except as the bytes a front-end injects upstream: they are not in reprs, logs, errors,
audit events or API responses.
"""
