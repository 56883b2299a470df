"""How fast: device data (``gpus``: the catalog and what users type; ``device_specs``: GPU
data sheets and this CPU measured), step and epoch time from a traced cost, a plan's cost.

May import: ``trace``, ``step``, ``models``, ``data``, ``core``.
"""
