"""`make bench`: one run, one table (see bench/README.md)."""
