"""Reproduce the published STN results with one command (``torchstn reproduce``).

An experiment is a table of cells (model x dataset x seed) with the paper's number
beside each; :func:`plan` lists the cells of a budget, :func:`run_experiment` trains
the unfinished ones with the engine (resuming an interrupted one) and records each in
``results/<experiment>.json``, and :func:`write_report` renders
``results/<experiment>.md`` from that record.

Example:
    >>> from torchstn.reproduce import get_experiment, plan
    >>> cells = plan(get_experiment("stn-table1"), "standard", only=["cnn", "st-cnn-aff"], datasets=["rts"])
    >>> [(c.row.key, c.column.key, c.config["steps"]) for c in cells]
    [('cnn', 'rts', 2811), ('st-cnn-aff', 'rts', 2811)]
"""

from __future__ import annotations

from torchstn.reproduce._experiments import (
    BUDGETS,
    EXPERIMENTS,
    Column,
    Experiment,
    Row,
    get_experiment,
    list_experiments,
)
from torchstn.reproduce._report import (
    ROTATION_BINS,
    SCALE_QUANTILES,
    SHIFT_QUANTILES,
    distortion_shift,
    draws_figure,
    error_by_rotation,
    error_by_scale,
    error_by_shift,
    error_splits,
    figure_path,
    render_report,
    summarize,
    write_figure,
    write_report,
)
from torchstn.reproduce._figures import plot_series_warps, plot_volume_views
from torchstn.reproduce._runner import (
    DEFAULT_OUT,
    DEFAULT_RUNS,
    SUBSET_KEYS,
    Cell,
    CellBusy,
    CellLock,
    Results,
    WorkersLost,
    default_jobs,
    machine_info,
    plan,
    recipe_changes,
    run_cell,
    run_experiment,
)

__all__ = [
    "BUDGETS",
    "DEFAULT_OUT",
    "DEFAULT_RUNS",
    "EXPERIMENTS",
    "ROTATION_BINS",
    "SCALE_QUANTILES",
    "SHIFT_QUANTILES",
    "SUBSET_KEYS",
    "Cell",
    "CellBusy",
    "CellLock",
    "Column",
    "Experiment",
    "Results",
    "Row",
    "WorkersLost",
    "default_jobs",
    "distortion_shift",
    "draws_figure",
    "error_by_rotation",
    "error_by_scale",
    "error_by_shift",
    "error_splits",
    "figure_path",
    "get_experiment",
    "list_experiments",
    "machine_info",
    "plan",
    "plot_series_warps",
    "plot_volume_views",
    "recipe_changes",
    "render_report",
    "run_cell",
    "run_experiment",
    "summarize",
    "write_figure",
    "write_report",
]
