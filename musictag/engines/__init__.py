"""Where tracks are decoded and scored: here, in worker processes (local), or on a Ray cluster (ray_engine,
imported only for --engine ray). Both yield one Decoded per track."""
