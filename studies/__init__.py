"""Studies: matrices of training runs (methods x caption noise x data x seeds) evaluated and compared in a report.

    python -m studies --config studies/noise.yaml [--quick] [--output DIR]

The YAML files beside this package define the studies; `plan` reads one and plans its runs, `runner` trains
(`training_runs`) and evaluates (`measures`) each run not done yet, resumably, and `report` writes the comparison
(tables with paired intervals, figures).
"""
