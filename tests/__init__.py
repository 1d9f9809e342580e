"""headstart's tests. A regular package, so that ``tests.conftest`` is this folder's even when an installed
distribution ships a top-level ``tests`` package of its own (iterative-stratification 0.1.9 does)."""
