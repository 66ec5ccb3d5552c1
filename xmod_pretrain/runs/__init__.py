"""Run directories: the one-trainer lock, the paths a run stores, reading a run and writing one
derived from it, starting a run in its fixed order (launch.py), loading a run for inference, and
one language's modules as a file."""
