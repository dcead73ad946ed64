"""Measurements that give verdicts: checks on data, on models and on trained runs."""
