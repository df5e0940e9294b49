"""Speed benchmarks, run as modules: `python -m benchmarks.train_speed` (training steps, teachers, memory),
`python -m benchmarks.data_loading` (the training loader) and `python -m benchmarks.feature_extraction` (encoding
images for evaluation)."""
