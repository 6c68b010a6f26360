"""Planet-scale capacity simulation: these machines reach no cloud, so how gpuroam finds GPUs at
scale is studied in a simulated world, driving gpuroam's real placement code.

    world.py       the world: capacity per (region, GPU) minute by minute, quotas, incidents, demand
    policies.py    gpuroam (real `placement.plan` and block backoff) and the sequential baseline
    simulation.py  the event loop (`Simulation`): one policy in one world, and its figures
    runner.py      many seeded runs over processes; a study over world kinds
    figures.py     figures pooled over runs, and the goals checked
    plots.py       the PNG plots (matplotlib, the `sim` extra)

`gpuroam sim` runs it all.
"""
