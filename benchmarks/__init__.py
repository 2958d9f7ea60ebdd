"""alarm's speed and resource benchmarks: ``python -m benchmarks`` runs the suite (benchmarks/__main__.py),
``python -m benchmarks.<name>`` one benchmark; every one takes ``--smoke`` (tiny models, seconds)."""
