"""Conformance: the `inspection` role (see `offload.brokers.roles`)."""
