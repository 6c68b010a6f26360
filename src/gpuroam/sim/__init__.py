"""Planet-scale capacity simulation: these machines reach no cloud, so how gpuroam finds GPUs at
scale, and how it follows demand, is studied in a simulated world, driving gpuroam's real
placement and autoscaling code.

    world.py       the world: capacity per (region, GPU) minute by minute, quotas, incidents, demand
    spot_world.py  Spot in the world: its capacity, quotas, preemptions per GPU type, regional waves, the notice
    traces.py      demand traces for the autoscaling study (steady, burst, sparse) and their requests
    load.py        the queue those requests meet, and the signals autoscalers read from it
    sizing.py      how many replicas: gpuroam's real `autoscale.decide` and SkyServe's request-rate rule
    policies.py    gpuroam (real `placement.plan` and block backoff) and the sequential baseline
    spothedge.py   SkyServe's SpotHedge (Spot spread and avoided where preempted, on-demand fallback)
    simulation.py  the event loop (`Simulation`): one policy in one world, and its figures
    serving.py     what the ready replicas served: availability, demand within the latency bound
    runner.py      many seeded runs over processes; a study over world kinds, traces or Spot models
    figures.py     figures pooled over runs, and the goals checked
    plots.py       the PNG plots (matplotlib, the `sim` extra)

`gpuroam sim` runs the capacity study; `gpuroam sim --traces steady,burst,sparse` the autoscaling one;
`gpuroam sim --spot base,low,high` the Spot one.
"""
