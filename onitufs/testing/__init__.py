"""Tools for the test suites of drivers: the conformance suite every driver runs.

harness.py runs a driver outside a mount, backdoor.py reaches its remote
directly, conformance.py holds the tests (see CONFORMANCE in
onitufs-drivers(7)). Only test suites import this package: it needs pytest,
which onitufs itself does not.
"""
