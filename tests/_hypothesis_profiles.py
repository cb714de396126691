"""Hypothesis profiles for the property tests, chosen by XDEZERO_HYPOTHESIS_PROFILE (default "ci").

ci:   25 examples per test, derandomized (the same examples on every run) and without the example database,
      so that CI is reproducible and writes nothing.
quick: 8 examples per test, derandomized: for a backend whose every new shape costs a compilation (JAX: about
      4x the time of NumPy per example), where the whole layer must stay near a minute.
long: 500 random examples per test, with the database in .hypothesis/ so that a failure found once is replayed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# The `xp` fixture returns a module namespace that no example mutates: sharing it across examples is safe.
_SHARED = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}

settings.register_profile("ci", max_examples=25, derandomize=True, database=None, **_SHARED)
settings.register_profile("quick", max_examples=8, derandomize=True, database=None, **_SHARED)
settings.register_profile("long", max_examples=500, print_blob=True, **_SHARED)

PROFILE = os.environ.get("XDEZERO_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)  # an unknown name raises InvalidArgument listing the registered ones
