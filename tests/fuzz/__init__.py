"""Fuzz harnesses for every parser of untrusted bytes (not collected by pytest: no test_ files).

targets.py defines the harnesses (bytes in; only the documented exceptions may come out);
`python3 -m tests.fuzz --total 1000000` is the long, time-bounded run (atheris when installed,
coverage-guided, else hypothesis); tests/unit/test_fuzz_short.py runs a short hypothesis pass
of every harness inside the default test run.
"""
