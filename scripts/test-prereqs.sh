#!/usr/bin/env bash
# System services and packages the test suite talks to. Redis and PostgreSQL are normally
# running on our machines already; start them if not. Chromium is for the browser tests.
set -euo pipefail

if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || echo "warning: could not start redis" >&2
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start \
    || echo "warning: could not start postgresql" >&2
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || echo "warning: could not install chromium; browser tests will be skipped" >&2
  fi
fi
