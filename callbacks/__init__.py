"""Composer Callbacks this project adds: the training doctor and its rules, preemption and exact resume, stable
metric names, the metrics file, rank 0's buffers under DDP, findings, and the rank rules they share."""
