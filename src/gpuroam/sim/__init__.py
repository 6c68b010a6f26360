"""Planet-scale capacity simulation: these machines reach no cloud, so how gpuroam finds GPUs at
scale, and how it follows demand, is studied in a simulated world, driving gpuroam's real
placement and autoscaling code.

    world.py       the world: capacity per (region, GPU) minute by minute, quotas, incidents, demand
    traces.py      demand traces for the autoscaling study (steady, burst, sparse) and their requests
    load.py        the queue those requests meet, and the signals autoscalers read from it
    sizing.py      how many replicas: gpuroam's real `autoscale.decide` and SkyServe's request-rate rule
    policies.py    gpuroam (real `placement.plan` and block backoff) and the sequential baseline
    simulation.py  the event loop (`Simulation`): one policy in one world, and its figures
    runner.py      many seeded runs over processes; a study over world kinds, or over traces
    figures.py     figures pooled over runs, and the goals checked
    plots.py       the PNG plots (matplotlib, the `sim` extra)

`gpuroam sim` runs the capacity study; `gpuroam sim --traces steady,burst,sparse` the autoscaling one.
"""
