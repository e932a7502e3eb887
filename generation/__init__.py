"""FLUX.1 generation: the variant catalogue and the backends that produce images."""
