"""Studies: matrices of training runs (methods x caption noise x data x seeds) evaluated and compared in a report.

    python -m studies --config studies/noise.yaml [--quick] [--output DIR]

The YAML files beside this package define the studies; `runner` trains and evaluates their runs (resumably), and
`report` writes the comparison (tables with paired intervals, figures).
"""
