"""asv benchmarks for softk (see ../README.md)."""
