"""One aiobotocore SQS client per broker, and SQS's errors in offload's words.

The client belongs to the event loop that opened it (aiohttp underneath), like the
other brokers' pools. botocore retries a throttled or cut call itself (standard mode,
3 tries); what still fails is `BrokerUnavailable` (the worker's health loop waits for
the server to come back) or, for a refused request, `BrokerError` naming the call.
Credentials never appear in a message: botocore does not put them in its own, and
every `OffloadError` is scrubbed (`offload._redact`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import aiobotocore.session
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from offload.brokers.sqs.config import SQSConfig
from offload.errors import BrokerError, BrokerUnavailable, ConfigurationError

__all__ = ["QueueMissing", "SQSClient", "error_code"]


class QueueMissing(BrokerError):
    """An SQS queue offload had found is gone: deleted, or the server lost it (a local
    server restarted empty). The caller finds or creates its queues again."""


def error_code(exc: ClientError) -> str:
    """The AWS error code of a refused call (`AWS.SimpleQueueService.NonExistentQueue`…)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


class SQSClient:
    """Opens and closes the aiobotocore client; `call` runs one SQS API call.

    Deliberately thin: it knows nothing about queues or jobs, only how to reach SQS
    and how its failures map onto offload's errors.
    """

    def __init__(self, config: SQSConfig) -> None:
        self.config = config
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    @property
    def is_open(self) -> bool:
        return self._client is not None

    async def open(self) -> None:
        """Create the client (no request is sent yet); idempotent."""
        if self._client is not None:
            return
        cfg = self.config
        session = aiobotocore.session.get_session()
        if cfg.profile:
            session.set_config_variable("profile", cfg.profile)
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                session.create_client(
                    "sqs",
                    region_name=cfg.region,
                    endpoint_url=cfg.endpoint_url,
                    aws_access_key_id=cfg.access_key_id,
                    aws_secret_access_key=cfg.secret_access_key,
                    config=AioConfig(
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=5,
                        read_timeout=cfg.wait_s + 15,  # a long poll holds the read open
                        max_pool_connections=50,
                    ),
                )
            )
        except NoRegionError:
            await stack.aclose()
            raise ConfigurationError(
                "the sqs broker needs a region: add ?region=NAME to the URL or set "
                "AWS_DEFAULT_REGION"
            ) from None
        except BotoCoreError as exc:
            await stack.aclose()
            raise ConfigurationError(f"cannot set up the SQS client: {exc}") from None
        self._stack = stack

    async def close(self) -> None:
        """Close the client's connections; idempotent."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Run one SQS call (`operation` is the snake_case name, `receive_message`).

        Raises:
            BrokerUnavailable: SQS could not be reached, or kept failing.
            ConfigurationError: no credentials were found.
            QueueMissing: the queue does not exist (any more).
            botocore.exceptions.ClientError: SQS refused the request (the caller
                decides: a missing queue is created, a stale receipt is a lost lease).
        """
        if self._client is None:
            raise BrokerError("the sqs broker is not connected (call connect() first)")
        method = getattr(self._client, operation)
        try:
            response: dict[str, Any] = await method(**params)
        except ClientError as exc:
            code = error_code(exc)
            if code in _UNAVAILABLE:
                raise BrokerUnavailable(f"SQS {operation}: {exc}") from None
            if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
                raise QueueMissing(f"SQS {operation}: {exc}") from None
            raise
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise ConfigurationError(
                f"no AWS credentials for the sqs broker ({exc}): set them in the "
                "environment, ~/.aws or an instance role, or name a profile= in the URL"
            ) from None
        except (BotoCoreError, OSError) as exc:
            raise BrokerUnavailable(f"SQS {operation}: {type(exc).__name__}: {exc}") from None
        return response


#: Error codes that mean "try again later", not "your request is wrong".
_UNAVAILABLE = frozenset(
    {
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestThrottled",
        "ThrottlingException",
        "Throttling",
        "KmsThrottled",
        "500",
        "502",
        "503",
        "504",
    }
)
