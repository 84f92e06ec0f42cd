"""Conformance: the `signals` role (see `offload.brokers.roles`)."""
