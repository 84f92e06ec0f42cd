"""Conformance: the `fleet` role (see `offload.brokers.roles`)."""
