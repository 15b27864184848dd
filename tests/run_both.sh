#!/usr/bin/env bash
# The test command: the whole suite under Keras 3 (default tf.keras), then under Keras 2
# (TF_USE_LEGACY_KERAS=1). Extra arguments go to pytest. Exits non-zero if either fails.
cd "$(dirname "$0")/.." || exit 2
status=0
echo "=== Keras 3 (tf.keras default) ==="
env -u TF_USE_LEGACY_KERAS python -m pytest -q "$@" tests || status=1
echo "=== Keras 2 (TF_USE_LEGACY_KERAS=1) ==="
TF_USE_LEGACY_KERAS=1 python -m pytest -q "$@" tests || status=1
exit $status
