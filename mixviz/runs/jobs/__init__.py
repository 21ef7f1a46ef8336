"""Jobs: one spec, one run, in a queue (local processes or Ray Jobs), run by a worker through
its steps (load, quantize, evaluate, ship, record), and delivered to ``--out``."""
