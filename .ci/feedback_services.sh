#!/usr/bin/env bash
# Services for the feedback web app's tests: Debian's PostgreSQL and Chromium, Playwright for Python.
# Source it so the database URL reaches the tests:   source .ci/feedback_services.sh
# Nothing is installed unless ALIGNLOOP_TEST_SERVICES=install (.ci/run sets it); then it uses apt-get (as root,
# or with password-less sudo: it never prompts) and pip. It is idempotent: installed packages are not reinstalled and a running cluster is reused.
# Exports ALIGNLOOP_TEST_PG_URL (a PostgreSQL on 127.0.0.1, free port, run by a non-root user).

_alignloop_feedback_services() {
  local state="${ALIGNLOOP_PG_DIR:-/tmp/alignloop-ci-pg}"
  local sudo_cmd="" run_as=() need=() pg_bin port
  local install="${ALIGNLOOP_TEST_SERVICES:-}"
  # never prompt: sudo -n fails at once where a password would be needed
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo -n"

  [ -x /usr/bin/chromium ] || need+=(chromium)
  ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
  python -c "import playwright, psycopg" 2>/dev/null || need+=("playwright+psycopg (pip)")
  if [ "${#need[@]}" -gt 0 ] && [ "$install" != "install" ]; then
    echo "feedback services: not installed: ${need[*]}; the browser and PostgreSQL tests will be skipped."
    echo "  To run them: ALIGNLOOP_TEST_SERVICES=install make test (apt-get installs chromium and postgresql,"
    echo "  as root or with password-less sudo; pip installs playwright and psycopg into this environment)"
    return 0
  fi
  need=("${need[@]/playwright+psycopg (pip)}")
  if [ -n "${need[*]// /}" ]; then
    echo "feedback services: installing ${need[*]} from Debian${sudo_cmd:+ with $sudo_cmd}"
    $sudo_cmd apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends ${need[*]} >/dev/null || return 1
  fi
  if ! python -c "import playwright, psycopg" 2>/dev/null; then
    echo "feedback services: pip install playwright psycopg[binary]"
    python -m pip install -q playwright "psycopg[binary]" || return 1
  fi

  pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  # PostgreSQL refuses to run as root: use the 'postgres' account the package created.
  [ "$(id -u)" -eq 0 ] && run_as=(runuser -u postgres --)
  if [ -f "$state/port" ] && "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$(cat "$state/port")"; then
    port="$(cat "$state/port")"
    echo "feedback services: reusing PostgreSQL on 127.0.0.1:$port"
  else
    rm -rf "$state" && mkdir -p "$state"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$state"
    port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    echo "feedback services: starting PostgreSQL ($pg_bin) on 127.0.0.1:$port, data in $state"
    "${run_as[@]}" "$pg_bin/initdb" -D "$state/data" -U alignloop --auth=trust -E UTF8 >"$state/initdb.log" 2>&1 || { cat "$state/initdb.log"; return 1; }
    "${run_as[@]}" "$pg_bin/pg_ctl" -D "$state/data" -l "$state/server.log" -w -o "-c listen_addresses=127.0.0.1 -p $port -k $state -c max_connections=200" start >/dev/null || { cat "$state/server.log"; return 1; }
    "${run_as[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U alignloop alignloop_test || return 1
    echo "$port" > "$state/port"
  fi
  export ALIGNLOOP_TEST_PG_URL="postgresql://alignloop@127.0.0.1:$port/alignloop_test"
  echo "feedback services: ALIGNLOOP_TEST_PG_URL=$ALIGNLOOP_TEST_PG_URL"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  _alignloop_feedback_services && echo "export ALIGNLOOP_TEST_PG_URL=$ALIGNLOOP_TEST_PG_URL"
else
  _alignloop_feedback_services
fi
