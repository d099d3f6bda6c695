"""Evaluation: learning and forgetting figures, on the live model or a saved one."""
