"""Training: the configuration, strategies as phases, the loop, heads fitted on cached features, and the commands
that train (``train``, ``compare``, ``adapt``)."""
