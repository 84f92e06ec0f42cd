"""Conformance: the `delivery` role (see `offload.brokers.roles`)."""
