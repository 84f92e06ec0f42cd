"""Conformance: the `flow` role (see `offload.brokers.roles`)."""
