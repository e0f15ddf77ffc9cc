"""Humans: users, roles, groups, login (password, TOTP, OIDC) and personal API tokens.

The package imports nothing itself (``tether.config`` reads :mod:`tether.users.config` on
every command); see :mod:`~tether.users.service`, :mod:`~tether.users.store`,
:mod:`~tether.users.passwords`, :mod:`~tether.users.totp` and :mod:`~tether.users.oidc`.
"""
