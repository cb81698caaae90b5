"""Benchmarks for novaconsole's speed goals (run with ``python -m bench``; results in RESULTS.md).

Each module with a ``main(argv)`` function is one benchmark. Speed goals live here and in
``bench/RESULTS.md`` with their exact command, never as timed assertions in the tests.
"""
