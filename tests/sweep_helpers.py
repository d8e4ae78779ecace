"""Experiments shared by the sweep and report tests."""

# A small experiment: 6 points of well under a second each.
SMALL = """
[machine]
cpus = 2
last_pkmap = 32
[workload]
kind = "uniform"
pages = 512
kmaps_per_cpu = 60
[sweep]
"policy.name" = ["linux-2.4", "eager", "kmap-local"]
workload.kind = ["uniform", "zipf"]
"""
