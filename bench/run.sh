#!/usr/bin/env bash
# bench/run.sh: the benchmark is bench/run.py (its --help says how to run it).
exec python3 "$(dirname "$0")/run.py" "$@"
