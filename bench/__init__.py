"""``make bench``: side-by-side benchmarks of ingest, delivery, decoupling and memory.

Every figure that is judged against a target is a ratio of two things measured in the same run,
interleaved, because the machine is shared and noisy; each measurement is repeated and the median kept.
Only 127.0.0.1 is ever loaded, every loop is bounded by a duration, and every process started here is
started in its own process group and stopped by its id.
"""
