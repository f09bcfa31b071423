"""`make bench`: the benchmark harness (run as `.venv/bin/python tests/bench/run.py [--quick]`).

Starts its own PostgreSQL, Apache Kafka (or Tansu without Java) and the four services, generates
a seeded population, measures throughput, latency and per-service figures against baselines
run on the same machine in the same run, and writes `bench/results.json` and `bench/results.png`.
"""
