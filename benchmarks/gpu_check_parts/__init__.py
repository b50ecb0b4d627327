"""The sections of benchmarks/gpu_check.py, one module each; that script is the entry point.

common: the plan, budget, context and section outcomes they share; environment: versions and machine;
train, export, runtimes, trt: the four sections in the order the script runs them.
"""
