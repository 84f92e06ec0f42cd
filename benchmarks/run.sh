#!/usr/bin/env bash
# The one command: offload against its Python peers on the local Redis (DB 15).
#
#   benchmarks/run.sh [--jobs 20000] [--runs 3] [--systems a,b] [--depth] [--output FILE]
#
# Creates benchmarks/.venv on first use and installs the peers there from PyPI, plus
# offload itself (editable, with its redis, postgres and amqp extras). None of the peers
# is a dependency of offload. Needs a Redis server on 127.0.0.1:6379 (BENCH_REDIS_URL to change it);
# the benchmark flushes only its own database, 15.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
peers=(
  "celery[redis]" rq "dramatiq[redis,rabbitmq]" arq huey saq taskiq taskiq-redis aiormq
  gevent "redis[hiredis]" py-spy pyinstrument
)
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -U pip
  "$venv/bin/pip" install -q "${peers[@]}"
  "$venv/bin/pip" install -q streaq || echo "streaq did not install; its rows will say error" >&2
fi
if ! "$venv/bin/python" -c "import offload, psycopg" 2>/dev/null; then
  # The extras may not exist in older checkouts: then plain offload + redis-py.
  "$venv/bin/pip" install -q -e "$here/..[redis,postgres,amqp]" 2>/dev/null \
    || "$venv/bin/pip" install -q -e "$here/.." "redis[hiredis]"
fi
redis-cli -u "${BENCH_REDIS_URL:-redis://127.0.0.1:6379/15}" ping >/dev/null
exec "$venv/bin/python" "$here/peers.py" "$@"
