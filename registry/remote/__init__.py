"""registry.remote: the OCI distribution client for Docker Hub, GHCR and any OCI registry. Public surface:
pull.pull / pull_image / ensure_image (FROM and `run --pull`), push.push / push_image,
config.RegistriesConfig (mirrors, insecure hosts, certs.d CAs), auth.CredentialStore (docker's
config.json), client.Remote (one transport + authenticator). Imports requests/urllib3 and registry."""
