"""Shared layer of edgeinfer: data, training loop, checkpoints, export, sharding, errors, reports.

The five technique packages build on this and never import each other.
"""
