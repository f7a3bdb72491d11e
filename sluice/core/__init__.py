"""Shared vocabulary of sluice: config schema, domain records, errors and the clock.

Nothing here imports any other sluice package.
"""
