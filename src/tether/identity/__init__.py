"""Identity: agents' short-lived credentials, Tether's signing keys, proof of possession.

The credentials core is ``errors`` (the credential error tree), ``jose`` (strict JWS/JWK
building blocks), ``keys`` (signing keys, key ring, JWKS), ``claims`` and ``tokens``
(access tokens), ``dpop`` (RFC 9449 proofs), ``replay`` and ``certbind`` (RFC 8705).
Each module's docstring states its security decisions.
"""
