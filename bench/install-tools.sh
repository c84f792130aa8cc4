#!/bin/sh
# h2load (nghttp2-client) and wrk for `make bench`, from Debian/Ubuntu packages when missing.
# Without root (or apt), says so and carries on: the bench then drives that path with
# bench/pydriver.py and reports the driver's CPU share.
set -u
missing=""
command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench: h2load/wrk missing and no apt-get; install$missing yourself for the usual load generators" >&2
  exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "bench: h2load/wrk missing; run: sudo apt-get install -y$missing" >&2
  exit 0
fi
echo "bench: installing$missing" >&2
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq$missing >/dev/null || \
  echo "bench: could not install$missing; falling back to bench/pydriver.py" >&2
exit 0
