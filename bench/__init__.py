"""Benchmarks: each starts authsvc itself, drives load on loopback and prints a table and JSON."""
