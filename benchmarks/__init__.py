"""Speed benchmarks of training, run as modules: `python -m benchmarks.teacher_cost`."""
