"""The broker conformance suite: every broker passes every test here, role by role
(one folder per role of `offload.brokers.roles`).

A full broker joins the suite by adding its name to `BROKER_NAMES` in `tests/conftest.py`;
a broker that can only deliver, to `DELIVERY_ONLY_NAMES` in `conftest.py` here (the
tests taking the `delivery` fixture), then to `COMPOSED_NAMES` with its state store.
"""

from __future__ import annotations
