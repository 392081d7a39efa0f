"""dbfleet benchmarks: each module has run(ctx) -> list[Result]; bench/run.py prints the ratios."""
