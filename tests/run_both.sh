#!/usr/bin/env bash
# The test command: every test whose outcome can depend on the Keras generation under Keras 3
# (default tf.keras) and under Keras 2 (TF_USE_LEGACY_KERAS=1); the tests marked
# keras_independent (NumPy references, loaders, metrics, downloads; see tests/conftest.py)
# run once, in the Keras 2 run, which is the lighter one (the Keras 3 run has the keras-hub
# towers and the regime study's --quick run). Extra arguments go to pytest. Exits non-zero
# if either fails.
#
# The two generations run at the same time, each in its own process tree with its own
# pytest temporary directory: much of a test's time is single-threaded (tracing, process
# start-up, notebook kernels). On CI's 2 cores each took 20-23 minutes side by side, where one
# generation alone took about 15. SAMTONE_TF_SERIAL=1 runs them one after the other instead.
# Each run's output is kept in a log and printed whole when both are done.
cd "$(dirname "$0")/.." || exit 2
scratch=$(mktemp -d "${TMPDIR:-/tmp}/samtone-tests.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

run() {  # run NAME MARKS [ENV...] : one generation's suite, output to $scratch/NAME.log
    local name=$1 marks=$2
    shift 2
    env "$@" python -m pytest -q --basetemp="$scratch/$name-tmp" ${marks:+-m "$marks"} \
        "${pytest_args[@]}" tests > "$scratch/$name.log" 2>&1
}

both="not keras_independent or keras_dependent"  # the marks: tests/conftest.py

pytest_args=("$@")
if [ "${SAMTONE_TF_SERIAL:-0}" = 1 ]; then
    run keras3 "$both" -u TF_USE_LEGACY_KERAS; status3=$?
    run keras2 "" TF_USE_LEGACY_KERAS=1; status2=$?
else
    run keras3 "$both" -u TF_USE_LEGACY_KERAS & pid3=$!
    run keras2 "" TF_USE_LEGACY_KERAS=1 & pid2=$!
    wait "$pid3"; status3=$?
    wait "$pid2"; status2=$?
fi
echo "=== Keras 3 (tf.keras default) ==="
cat "$scratch/keras3.log"
echo "=== Keras 2 (TF_USE_LEGACY_KERAS=1) ==="
cat "$scratch/keras2.log"
echo "=== Keras 3: exit $status3; Keras 2: exit $status2 ==="
[ "$status3" = 0 ] && [ "$status2" = 0 ]
