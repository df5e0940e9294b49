"""Deprecated alias, kept for one release: `python -m eval.benchmark` is `python -m benchmarks.feature_extraction`."""

from benchmarks.feature_extraction import benchmark, main  # noqa: F401

if __name__ == "__main__":
    main()
