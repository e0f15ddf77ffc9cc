"""Identity: agents' short-lived credentials, Tether's signing keys, proof of possession.

Credentials core: ``errors`` (the credential error tree), ``keys`` (signing keys, key
ring, JWKS), ``jose`` (strict JWS/JWK building blocks), ``claims`` and ``tokens`` (access
tokens), ``dpop`` (RFC 9449 proofs), ``replay`` (the replay cache), ``certbind``
(RFC 8705 certificate binding). ``sshca``: Tether's SSH user certificate authorities.
"""
