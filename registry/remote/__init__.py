"""registry.remote: the OCI distribution client (pull, push, login) for Docker Hub, GHCR and any
OCI registry.

Public surface: ``pull.pull`` / ``pull.pull_image`` / ``pull.ensure_image`` (the builder's FROM
and `run --pull`), ``push.push`` / ``push.push_image``, ``config.RegistriesConfig`` (mirrors,
insecure hosts, certs.d CAs), ``auth.CredentialStore`` (docker's config.json), ``client.Remote``
(one transport + authenticator shared by many operations). Imports requests/urllib3 and
registry.*; nothing from builder/runtime/grammar.
"""
