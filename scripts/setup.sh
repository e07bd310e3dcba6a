#!/usr/bin/env bash
# Install s2fin into ./.venv with everything it needs, on a fresh Debian/Ubuntu machine.
# Idempotent: a second run only checks. Used by README's first command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${S2FIN_TORCH_VERSION:-2.13.0}"  # pinned: an unpinned torch pulls a multi-GB CUDA build

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# GDAL's command-line tools (gdalinfo, used by tests) and headers (to build osgeo bindings).
if ! command -v gdal-config >/dev/null 2>&1 || ! command -v gdalinfo >/dev/null 2>&1; then
  echo "setup: installing libgdal-dev and gdal-bin with apt-get"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq libgdal-dev gdal-bin >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip setuptools wheel
"${PIP[@]}" "torch==${TORCH_VERSION}"
"${PIP[@]}" -e ".[test]"
GDAL_VERSION="$(gdal-config --version)"
if ! .venv/bin/python -c "from osgeo import gdal; assert gdal.__version__ == '${GDAL_VERSION}'" 2>/dev/null; then
  echo "setup: building GDAL ${GDAL_VERSION} Python bindings (about 80 s)"
  "${PIP[@]}" --no-build-isolation "gdal[numpy]==${GDAL_VERSION}"
fi
.venv/bin/s2fin --version
