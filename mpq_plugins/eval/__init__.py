"""Evaluation: sclite scoring, MAPSSWE significance, training logs, plots and the RESULTS.md report."""
