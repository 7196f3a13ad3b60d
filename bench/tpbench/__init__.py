"""The parts of bench/run.py: processes, targets, settings, phases, modes and the self-test."""
