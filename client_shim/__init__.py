"""client_shim: the legacy kafka-python Producer API, served by the local kafkad daemon."""
