"""The config every bench job runs (the default machine, with its CPU count, kmaps and trace switch): one
home for the jobs and the profiler, so that neither imports the other."""

from __future__ import annotations


def bench_config(cpus: int, kmaps_total: int, trace: bool):
    from smpsim.config import load_config
    per_cpu = max(1, kmaps_total // cpus)
    return load_config(None, [f"machine.cpus={cpus}", f"workload.kmaps_per_cpu={per_cpu}",
                              f"trace.enabled={'true' if trace else 'false'}"])
