"""Evaluation: MMLU-Expert (routing accuracy, answer accuracy, baselines)."""
