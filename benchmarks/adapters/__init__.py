"""One adapter per system under test, with a common small interface (`base.Adapter`).

`ADAPTERS` maps a system's name to `module:class`; the driver imports an adapter only
when it runs that system, so one peer failing to import does not stop the others.
"""

from __future__ import annotations

ADAPTERS: dict[str, str] = {
    "offload-redis": "adapters.offload:OffloadRedis",
    "offload-redis-def": "adapters.offload:OffloadRedisDef",
    "offload-sqlite": "adapters.offload:OffloadSQLite",
    "offload-amqp": "adapters.offload:OffloadAmqp",
    "offload-amqp-pg": "adapters.offload:OffloadAmqpPostgres",
    "offload-amqp-alone": "adapters.offload:OffloadAmqpAlone",
    "raw-redis-py": "adapters.raw:RawRedis",
    "celery": "adapters.celery:CeleryAdapter",
    "celery-threads": "adapters.celery:CeleryThreads",
    "rq": "adapters.rq:RQAdapter",
    "dramatiq": "adapters.dramatiq:DramatiqAdapter",
    "celery-rabbitmq": "adapters.celery_rabbitmq:CeleryRabbitAdapter",
    "dramatiq-rabbitmq": "adapters.dramatiq_rabbitmq:DramatiqRabbitAdapter",
    "arq": "adapters.arq:ArqAdapter",
    "huey": "adapters.huey:HueyAdapter",
    "saq": "adapters.saq:SaqAdapter",
    "taskiq": "adapters.taskiq:TaskiqAdapter",
    "streaq": "adapters.streaq:StreaqAdapter",
}

#: Systems that are the ceiling or offload itself, not peers (ratios are against peers).
NOT_PEERS = frozenset(
    {
        "offload-redis",
        "offload-redis-def",
        "offload-sqlite",
        "offload-amqp",
        "offload-amqp-pg",
        "offload-amqp-alone",
        "raw-redis-py",
    }
)
