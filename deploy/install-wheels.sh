#!/bin/sh
# Install the gateway's two wheels into a new venv:
#
#     deploy/install-wheels.sh WHEEL_DIR VENV
#
# The one install step of the image (deploy/Dockerfile RUNs it) and of the test that stands
# in for the image (tests/deploy/test_image.py runs it too), so the test installs what ships.
# WHEEL_DIR holds what `pip wheel --no-deps ./src/generated .` built: the contracts
# (task_gateway_api-*.whl) and the server (task_gateway-*.whl). Both are installed by path,
# not looked up by name, so that a package of the same name on the index can never be
# picked instead (dependency confusion); their dependencies come from the index.
# PYTHON names the interpreter for the venv (default: python3).
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 WHEEL_DIR VENV" >&2
    exit 2
fi
wheels=$1
venv=$2

# Exactly one wheel of each distribution, checked before anything is created.
set -- "$wheels"/task_gateway_api-*.whl
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
    echo "$0: WHEEL_DIR $wheels must hold exactly one task_gateway_api-*.whl (the contracts)" >&2
    exit 1
fi
contracts=$1
set -- "$wheels"/task_gateway-*.whl
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
    echo "$0: WHEEL_DIR $wheels must hold exactly one task_gateway-*.whl (the server)" >&2
    exit 1
fi
server=$1

"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --no-cache-dir --no-input --disable-pip-version-check \
    --progress-bar off "$contracts" "$server"
# Fails when an installed distribution's requirements are not met.
"$venv/bin/python" -m pip check
