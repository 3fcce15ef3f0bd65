"""The report of an experiment: ``results/<experiment>.md`` and the figures, from the recorded cells.

The report is rendered only from the results file (and, for figures, the run
directories), so it can be rewritten at any time and always says what was measured.
"""

from __future__ import annotations

import calendar
import shlex
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchstn.reproduce._experiments import BUDGETS, Column, Experiment, Row
from torchstn.reproduce._figures import plot_series_warps, plot_volume_views
from torchstn.reproduce._runner import DEFAULT_OUT, GONE_KEYS, Cell, Results, limit_changes, recipe_changes

if TYPE_CHECKING:
    import torch

    from torchstn.transforms import Transform

__all__ = [
    "ROTATION_BINS",
    "SCALE_QUANTILES",
    "SHIFT_QUANTILES",
    "distortion_shift",
    "draws_figure",
    "error_by_rotation",
    "error_by_scale",
    "error_by_shift",
    "error_splits",
    "figure_path",
    "render_report",
    "summarize",
    "write_figure",
    "write_report",
]


def summarize(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value).

    Example:
        >>> summarize([1.0, 2.0, 3.0])
        (2.0, 1.0)
        >>> summarize([0.5])
        (0.5, None)
    """
    mean = sum(values) / len(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(mean: float, std: float | None, n: int) -> str:
    if std is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def figure_path(results_dir: str | Path, experiment: str, budget: str, row: str, column: str) -> Path:
    """Where the figure of one cell goes: ``<results>/<experiment>/<budget>-<row>-<column>.png``."""
    return Path(results_dir) / experiment / f"{budget}-{row}-{column}.png"


def write_figure(cell: Cell, record: dict[str, Any], results_dir: str | Path, *, data_dir: str | None = None) -> Path | None:
    """Draw what the transformer(s) of a finished cell learned (:func:`torchstn.engine.plot_run`), and
    stamp ``record["figure"]`` with the time (the report shows the figure while that record is in its
    table: :func:`_figure_shown`; store the record again to keep the stamp).

    Returns:
        the PNG path, or ``None`` for a model without transformers or a run that is gone.
    """
    from torchstn.engine import RunDir, evaluation_draws, load_split, plot_run

    run_dir = RunDir(record["run"])
    if not cell.row.transformer or not run_dir.holds_run():
        return None
    model, config, info = _last_model(run_dir, data_dir)
    test_set = load_split(config, "test")
    history = run_dir.history()
    paper = f", paper {cell.paper:.1f}%" if cell.paper is not None else ""
    title = (f"{cell.row.label} on {cell.column.label} ({cell.experiment.name}, budget {cell.budget}, seed "
             f"{cell.seed}): test error {record['error']:.2f}%{paper}")
    out = figure_path(results_dir, cell.experiment.name, cell.budget, cell.row.key, cell.column.key)
    rank = len(test_set.input_shape)  # (C, L) series and (C, D, H, W) volumes have figures of their own
    with evaluation_draws(info["path"], config.seed):  # (a P-STN's draws: the same figure every time)
        if rank == 2:
            path = plot_series_warps(model, test_set, out, title=title)
        elif rank == 4:
            path = plot_volume_views(model, test_set, out, title=title)
        else:
            path = plot_run(model, test_set, out, history=history, num=10, title=title,
                            label_smoothing=config.label_smoothing, **config.call_options())
    record["figure"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return path


def draws_figure(experiment: Experiment, cells: dict[str, dict[str, Any]], cell: Cell) -> bool:
    """Whether ``cell`` is the one whose figure its table shows: the first seed of its (row, column)
    in the table of its budget (records of an earlier recipe are in no table). ``cells``: the record's."""
    runs = _BudgetView.of(experiment, cell.budget, cells).by_pair.get((cell.row.key, cell.column.key), [])
    return bool(runs) and min(r["seed"] for r in runs) == cell.seed


def _figure_shown(
    view: _BudgetView, cells: dict[str, dict[str, Any]], row_key: str, col_key: str, path: Path
) -> bool:
    """Whether the figure ``path`` of (row, column) at the view's budget was drawn from a record in its
    table: of the pair's records, the one stamped last by :func:`write_figure`; seed 0's for a figure
    drawn before the stamp (only seed 0 was drawn then) if written since that record finished (an older
    one is of the model it replaced: seed 0 retrained, its figure failed or interrupted)."""
    runs = [r for r in cells.values()
            if (r.get("budget"), r.get("row"), r.get("column")) == (view.budget, row_key, col_key)]
    stamped = [r for r in runs if r.get("figure")]
    source = (max(stamped, key=lambda r: r["figure"]) if stamped
              else next((r for r in runs if r.get("seed") == 0), None))
    if not stamped and source is not None and path.stat().st_mtime < _finished_at(source):
        return False
    return any(r is source for r in view.by_pair.get((row_key, col_key), []))


def _finished_at(record: dict[str, Any]) -> float:
    """When ``record`` finished (its ``finished`` stamp, to the second), in seconds since the epoch;
    ``0`` for a record without one."""
    try:
        return float(calendar.timegm(time.strptime(record["finished"], "%Y-%m-%d %H:%M:%S UTC")))
    except (KeyError, TypeError, ValueError):
        return 0.0


#: rotation bins (degrees) of :func:`error_by_rotation`
ROTATION_BINS: tuple[float, ...] = (0.0, 15.0, 30.0, 45.0, 90.0, 180.0)
#: quantiles of the test set's shifts that bound the bins of :func:`error_by_shift`: its
#: quarters, with the most distorted tenth apart
SHIFT_QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
#: quantiles of the test set's digit scales that bound the bins of :func:`error_by_scale`: its fifths
SCALE_QUANTILES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
#: the side of the frame an MNIST digit is drawn in, in pixels
_DIGIT_FRAME = 28


def error_splits(cell: Cell | None, record: dict[str, Any], *, data_dir: str | None = None) -> dict[str, list]:
    """Every per-bin analysis of a finished cell that its data has, from one pass of its
    last model over the test set: ``{"by_rotation": ..., "by_scale": ..., "by_shift": ...}``
    (:func:`error_by_rotation`, :func:`error_by_scale`, :func:`error_by_shift`; ``[]`` where
    the data has no such quantity or the run is gone)."""
    analyses = _analyses()
    families = tuple(family for kinds, _ in analyses.values() for family in kinds)
    tested = _test_predictions(record, data_dir, families)
    return _splits(*tested) if tested else {key: [] for key in analyses}


def error_by_rotation(cell: Cell | None, record: dict[str, Any], *, data_dir: str | None = None) -> list[dict[str, Any]]:
    """Test error (%) of a finished cell by the rotation of the test digit, where the data has one.

    For datasets drawn with a similarity transform (``mnist-r``, ``mnist-rts``: the
    ground-truth angle is ``params[:, 1]``) the test set is split by ``|angle|`` into
    :data:`ROTATION_BINS`. An error that grows with the angle says the model has not
    learned to undo the rotation.

    Returns:
        ``[{"degrees": [lo, hi], "n": count, "error": percent}, ...]`` for non-empty bins,
        or ``[]`` for other data or a run that is gone.
    """
    return error_splits(cell, record, data_dir=data_dir)["by_rotation"]


def error_by_scale(cell: Cell | None, record: dict[str, Any], *, data_dir: str | None = None) -> list[dict[str, Any]]:
    """Test error (%) of a finished cell by the scale of the test digit, where it varies.

    For datasets drawn with a similarity transform of varying scale (``mnist-rts``): the
    digit's size on the canvas over its size in MNIST's 28-pixel frame (0.7-1.2 for RTS),
    split at the :data:`SCALE_QUANTILES` of the test set. An error that falls with the
    scale says the small digits are what the model loses, e.g. resolution where the
    transformer does not enlarge them.

    Returns:
        ``[{"scale": [lo, hi], "n": count, "error": percent}, ...]`` for non-empty bins,
        or ``[]`` for other data (a constant scale: ``mnist-r``) or a run that is gone.
    """
    return error_splits(cell, record, data_dir=data_dir)["by_scale"]


def error_by_shift(cell: Cell | None, record: dict[str, Any], *, data_dir: str | None = None) -> list[dict[str, Any]]:
    """Test error (%) of a finished cell by how far the test digit's distortion moves its points.

    For datasets drawn with a homography (``mnist-p``, ``mnist-perturbed``) or a thin-plate
    spline (``mnist-e``): :func:`distortion_shift` of each test sample, split at the
    :data:`SHIFT_QUANTILES` of the test set. An error that grows steeply with the shift
    says where a cell's error lies: in the most distorted digits, or everywhere.

    Returns:
        ``[{"pixels": [lo, hi], "n": count, "error": percent}, ...]`` for non-empty bins,
        or ``[]`` for other data or a run that is gone.
    """
    return error_splits(cell, record, data_dir=data_dir)["by_shift"]


def _analyses() -> dict[str, tuple[tuple[type, ...], Callable[[Any, torch.Tensor], list[dict[str, Any]]]]]:
    """A record's per-bin analyses: its key, the transformations whose data it splits, and
    the bins from ``(test set, wrong)``."""
    from torchstn.transforms import Projective, Similarity, ThinPlateSpline

    return {"by_rotation": ((Similarity,), _by_rotation), "by_scale": ((Similarity,), _by_scale),
            "by_shift": ((Projective, ThinPlateSpline), _by_shift)}


def _splits(test_set: Any, wrong: torch.Tensor) -> dict[str, list[dict[str, Any]]]:
    """Each analysis of :func:`_analyses` on a test set (``[]`` where its data is of another family)."""
    return {key: (split(test_set, wrong) if isinstance(test_set.transform, kinds) else [])
            for key, (kinds, split) in _analyses().items()}


def _by_rotation(test_set: Any, wrong: torch.Tensor) -> list[dict[str, Any]]:
    import math

    degrees = test_set.params[:, 1].abs() * (180.0 / math.pi)
    return [{"degrees": [lo, hi], **b} for lo, hi, b in _binned(wrong, degrees, ROTATION_BINS)]


def _by_scale(test_set: Any, wrong: torch.Tensor) -> list[dict[str, Any]]:
    import torch

    # params map the canvas onto the digit's frame: their scale is (canvas / frame) / the digit's
    scale = (test_set.input_shape[-1] / _DIGIT_FRAME) / test_set.params[:, 0].double().abs()
    if float(scale.max() - scale.min()) < 1e-6:
        return []
    edges = torch.quantile(scale, torch.tensor(SCALE_QUANTILES, dtype=scale.dtype)).tolist()
    return [{"scale": [lo, hi], **b} for lo, hi, b in _binned(wrong, scale, edges)]


def _by_shift(test_set: Any, wrong: torch.Tensor) -> list[dict[str, Any]]:
    import torch

    shift = distortion_shift(test_set.transform, test_set.params, test_set.input_shape[-1])
    edges = torch.quantile(shift, torch.tensor(SHIFT_QUANTILES, dtype=shift.dtype)).tolist()
    return [{"pixels": [lo, hi], **b} for lo, hi, b in _binned(wrong, shift, edges)]


def distortion_shift(transform: Transform, params: torch.Tensor, size: int) -> torch.Tensor:
    """RMS distance, in pixels of a ``size``-pixel canvas, that a distortion moves its points
    beyond the uniform scale about the centre that fits them best.

    The points: for a homography (canvas -> digit, as :mod:`torchstn.data` draws them) the
    points of the digit that the canvas's four corners sample; for a thin-plate spline its
    control points' targets against the control grid (both in the frame where ``p`` and ``e``
    move them; until 2026-12-05 a homography's were the digit's corners as they land on the
    canvas, where ``p`` moved them then). A pure scale gives 0; for ``mnist-p`` the shift is
    the corner noise, N(0, 5 px) per axis (median 6.0 px over its test set).

    Args:
        transform: the data's :class:`~torchstn.Projective` or :class:`~torchstn.ThinPlateSpline`.
        params: ``(N, P)`` parameters of the samples.
        size: canvas side in pixels (normalised units are ``size / 2`` pixels).

    Returns:
        ``(N,)`` float64 shifts in pixels.
    """
    import torch

    from torchstn.transforms import Projective

    params = params.double()
    if isinstance(transform, Projective):
        reference = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
        moved = transform.transform_points(params, reference.expand(len(params), -1, -1))
    else:
        reference = transform.identity(device="cpu", dtype=torch.float64).view(-1, 2)
        moved = params.view(len(params), -1, 2)
    scale = (moved * reference).sum((1, 2)) / reference.pow(2).sum()
    residual = moved - scale[:, None, None] * reference
    return residual.pow(2).sum(-1).mean(1).sqrt() * (size / 2)


def _last_model(run_dir: Any, data_dir: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """``load_model`` of a cell's ``last`` checkpoint, its config measuring it on the law its data were
    drawn by (:func:`~torchstn.engine.run_data`, whose note is a warning) and reading the data from
    ``data_dir`` where one is given, else from the directory the run recorded (as ``torchstn eval``
    and ``visualize`` do; ``--refresh`` without ``--data-dir`` looked for a download instead)."""
    from torchstn.engine import load_model, run_data

    model, config, info = load_model(run_dir.path, "last")
    config, note = run_data(config, info)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    return model, (config if data_dir is None else config.replace(data_dir=data_dir)), info


def _test_predictions(
    record: dict[str, Any], data_dir: str | None, families: tuple[type, ...]
) -> tuple[Any, torch.Tensor] | None:
    """``(test set, wrong)`` of a finished cell's last model (``wrong``: 1.0 where it errs),
    or ``None`` when its run is gone or its test set was not drawn with one of ``families``."""
    from torchstn.engine import RunDir, evaluation_draws, load_split, predict
    from torchstn.engine.metrics import misclassified

    run_dir = RunDir(record["run"])
    if not run_dir.holds_run():
        return None
    model, config, _ = _last_model(run_dir, data_dir)
    test_set = load_split(config, "test")
    if getattr(test_set, "params", None) is None or not isinstance(getattr(test_set, "transform", None), families):
        return None
    with evaluation_draws(run_dir.checkpoint("last"), config.seed):  # (a P-STN: the θ behind its recorded error)
        logits, labels = predict(model, test_set, batch_size=config.eval_batch_size, **config.call_options())
    return test_set, misclassified(logits, labels).float()


def _binned(
    wrong: torch.Tensor, values: torch.Tensor, edges: Sequence[float]
) -> list[tuple[float, float, dict[str, Any]]]:
    """``(lo, hi, {"n", "error"})`` per non-empty bin of ``values`` between consecutive ``edges``
    (the last bin closed above); ``error`` in %."""
    out = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (values >= lo) & ((values < hi) if i < len(edges) - 2 else (values <= hi))
        if inside.any():
            out.append((lo, hi, {"n": int(inside.sum()), "error": 100.0 * float(wrong[inside].mean())}))
    return out


def _misses(experiment: Experiment, by_pair: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """One line per cell more than 0.3 points above the paper, saying whether it under-trained or overfit.

    The gap is compared at the two decimals it is printed with ("+0.30 points"): an error from float32
    counts (80 wrong of 10,000 is 0.800000038%) would otherwise list a cell printed 0.30 above as a miss.
    """
    out = []
    for (row_key, col_key), runs in by_pair.items():
        paper = experiment.paper.get((row_key, col_key))
        test, _ = summarize([r["error"] for r in runs])
        if paper is None or round(test - paper, 2) <= 0.3:
            continue
        train, _ = summarize([r["train_error"] for r in runs])
        epochs = runs[0]["epochs"]
        verdict = ("not converged: the training error is as high as the test error" if train >= 0.7 * test
                   else "overfits: the training error is well below the test error")
        out.append(f"- {experiment.row(row_key).label} on {experiment.column(col_key).label}: {test:.2f}% "
                   f"(paper {paper:.1f}%), training error {train:.2f}% after {epochs} epoch(s): {verdict}.")
    return out


def _against_standard(
    experiment: Experiment, budget: str, cells: dict[str, dict[str, Any]], means: dict[tuple[str, str], float]
) -> list[str]:
    """For a budget other than ``standard``: how its cells moved from their ``standard`` runs (those of
    the ``standard`` table: an earlier recipe's are in none)."""
    if budget == "standard":
        return []
    standard = _BudgetView.of(experiment, "standard", cells).by_pair
    moved = []
    for (row_key, col_key), mean in means.items():
        before = [r["error"] for r in standard.get((row_key, col_key), [])]
        if before:
            base = summarize(before)[0]
            moved.append(f"{experiment.row(row_key).label} on {experiment.column(col_key).label} "
                         f"{base:.2f}% → {mean:.2f}%")
    if not moved:
        return []
    return [f"The same cells at budget `standard`, then at `{budget}`: " + "; ".join(moved) + ".", ""]


@dataclass
class _BudgetView:
    """The finished records of one budget, arranged as the report's tables are."""

    experiment: Experiment
    budget: str
    records: list[dict[str, Any]]  # trained with today's recipe of the budget
    superseded: list[dict[str, Any]]  # trained with an earlier recipe: listed apart, in no table
    by_pair: dict[tuple[str, str], list[dict[str, Any]]]
    pairs: list[tuple[str, str]]
    columns: list[Column]
    rows: list[Row]

    @classmethod
    def of(cls, experiment: Experiment, budget: str, cells: dict[str, dict[str, Any]]) -> _BudgetView:
        of_budget = [r for r in cells.values() if r.get("budget") == budget]
        records = [r for r in of_budget if not recipe_changes(experiment, r)]
        superseded = [r for r in of_budget if recipe_changes(experiment, r)]
        by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in records:
            by_pair.setdefault((r["row"], r["column"]), []).append(r)
        pairs = [(row.key, col.key) for row, col in experiment.pairs()]
        columns = [c for c in experiment.columns if any(p[1] == c.key for p in pairs)]
        rows = [r for r in experiment.rows if any(p[0] == r.key for p in pairs)]
        return cls(experiment, budget, records, superseded, by_pair, pairs, columns, rows)

    def label(self, row_key: str, col_key: str) -> str:
        """``<row> on <column>`` by their labels (by their keys where the experiment no longer has them)."""
        rows = {r.key: r.label for r in self.experiment.rows}
        columns = {c.key: c.label for c in self.experiment.columns}
        return f"{rows.get(row_key, row_key)} on {columns.get(col_key, col_key)}"

    def in_table_order(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        order = {pair: i for i, pair in enumerate(self.pairs)}
        return sorted(records, key=lambda r: (order.get((r["row"], r["column"]), 1e9), r["seed"]))


def _budget_section(experiment: Experiment, budget: str, cells: dict[str, dict[str, Any]], results_dir: Path) -> list[str]:
    view = _BudgetView.of(experiment, budget, cells)
    if budget not in experiment.recipes:  # (every record of it is an earlier recipe's)
        return [f"## Budget `{budget}`, which {experiment.name} no longer has", "", *_superseded(view)]
    lines, means = _error_table(view)
    lines += _calibration_table(view)
    lines += _comparisons(view, means, cells)
    lines += _runs_table(view)
    lines += _split_tables(view)
    lines += _warnings_and_pending(view)
    lines += _superseded(view)
    lines += _provenance(view)
    lines += _figures_section(view, cells, results_dir)
    return lines


def _has_paper(experiment: Experiment) -> bool:
    """Whether a paper number is entered for any cell of ``experiment``."""
    return any(v is not None for v in experiment.paper.values())


def _error_table(view: _BudgetView) -> tuple[list[str], dict[tuple[str, str], float]]:
    """The table of ours beside the paper's, and the mean error of every finished cell."""
    experiment, columns = view.experiment, view.columns
    with_paper = _has_paper(experiment)  # else no column of dashes beside every cell
    lines = [f"## Test error (%), budget `{view.budget}`", ""]
    lines.append(
        f"{len(view.records)} finished run(s); seeds per cell: "
        f"{', '.join(str(len(v)) for v in view.by_pair.values()) or '0'}. "
        + ("Each cell: **ours** (mean ± std over seeds) and the paper's number; — = not run yet." if with_paper else
           "Each cell: **ours** (mean ± std over seeds); no paper number is entered for these cells (the notes "
           "say why); — = not run yet.")
    )
    lines.append("")
    if with_paper:
        header = "| model | " + " | ".join(f"{c.label} ours | {c.label} paper" for c in columns) + " |"
        lines += [header, "|---|" + "---:|---:|" * len(columns)]
    else:
        lines += ["| model | " + " | ".join(c.label for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    means: dict[tuple[str, str], float] = {}
    limited = False
    for row in view.rows:
        cells_text = []
        for col in columns:
            if (row.key, col.key) not in view.pairs:
                cells_text += ["", ""] if with_paper else [""]
                continue
            paper = experiment.paper.get((row.key, col.key))
            runs = view.by_pair.get((row.key, col.key), [])
            if runs:
                mean, std = summarize([r["error"] for r in runs])
                means[(row.key, col.key)] = mean
                ours = f"**{_fmt(mean, std, len(runs))}**"
                if any(_subset_changes(experiment, r) for r in runs):
                    ours += " †"
                    limited = True
            else:
                ours = "—"
            cells_text += [ours, "—" if paper is None else f"{paper:.1f}"] if with_paper else [ours]
        lines.append(f"| {row.label} | " + " | ".join(cells_text) + " |")
    lines.append("")
    if limited:
        lines += ["† trained or tested on fewer images than the budget's recipe (`--limit`; the runs table below "
                  "and each cell's recorded command say how many): not the budget's number.", ""]
    return lines, means


def _subset_changes(experiment: Experiment, record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The training and test subset sizes in which ``record`` differs from its budget's recipe
    (``None``: the whole split) by a ``--limit``: :func:`~torchstn.reproduce._runner.limit_changes`."""
    return {k: v for k, v in limit_changes(experiment, record).items() if k in ("train_limit", "test_limit")}


def _calibration_table(view: _BudgetView) -> list[str]:
    """For an experiment with ``calibration``: accuracy, NLL and ECE of every cell (mean ± std over seeds)."""
    if not view.experiment.calibration or not view.records:
        return []
    lines = [f"### Accuracy and calibration, budget `{view.budget}`", "",
             "Test accuracy (%, 100 - error), negative log-likelihood (NLL, nats) and 15-bin expected "
             "calibration error (ECE) of the predictive distribution; mean ± std over seeds. Lower NLL and ECE "
             "are better; — = not run yet (or a run recorded before they were).", "",
             "| model | " + " | ".join(f"{c.label} acc | {c.label} NLL | {c.label} ECE" for c in view.columns) + " |",
             "|---|" + "---:|---:|---:|" * len(view.columns)]
    for row in view.rows:
        cells_text = []
        for col in view.columns:
            runs = view.by_pair.get((row.key, col.key), [])
            for key, scale in (("error", None), ("nll", 1.0), ("ece", 1.0)):
                values = [r[key] for r in runs if key in r]
                if not values:
                    cells_text.append("—")
                    continue
                if scale is None:  # accuracy from the error
                    values = [100.0 - v for v in values]
                mean, std = summarize(values)
                digits = 2 if key == "error" else 3
                cells_text.append(f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}"))
        lines.append(f"| {row.label} | " + " | ".join(cells_text) + " |")
    return [*lines, ""]


def _seed_spread(view: _BudgetView, *pairs: tuple[str, str]) -> float | None:
    """The larger standard deviation over seeds of the test error of ``pairs``; ``None`` unless each has 2+ seeds."""
    spreads = [summarize([r["error"] for r in view.by_pair.get(pair, [])])[1] for pair in pairs]
    return None if any(s is None for s in spreads) else max(spreads)


def _test_noise(runs: Sequence[dict[str, Any]], mean: float, base: float) -> tuple[float, int] | None:
    """Twice the sampling noise (in points) of the difference of two test errors ``mean`` and ``base`` (%)
    measured on the same ``n`` test images, and ``n``: ``2 * 100 * sqrt((p (1 - p) + q (1 - q)) / n)``, the
    noise of each taken as independent (a bound: both read the same images). ``None`` unless every one
    of ``runs`` (the two cells' records) gives the same ``test_limit`` (a quick budget's 500 images; a
    whole test set records none, and its size is not in the record).

    Example:
        >>> noise, n = _test_noise([{"config": {"test_limit": 500}}] * 2, 91.0, 91.4)
        >>> round(noise, 2), n
        (3.58, 500)
    """
    limits = {r.get("config", {}).get("test_limit") for r in runs}
    if len(limits) != 1 or not isinstance(n := limits.pop(), int) or n < 1:
        return None
    p, q = mean / 100, base / 100
    return 2 * 100 * ((p * (1 - p) + q * (1 - q)) / n) ** 0.5, n


def _comparisons(view: _BudgetView, means: dict[tuple[str, str], float], cells: dict[str, dict[str, Any]]) -> list[str]:
    """Every ST model against its baseline, ours minus the paper, the move from `standard`, the misses."""
    experiment = view.experiment
    checks, gaps = [], []
    for (row_key, col_key), mean in means.items():
        row, col = experiment.row(row_key), experiment.column(col_key)
        if row.baseline is not None and (row.baseline, col_key) in means:
            base = means[(row.baseline, col_key)]
            verdict = "beats" if mean < base else "does **not** beat"
            spread = _seed_spread(view, (row_key, col_key), (row.baseline, col_key))
            if spread is not None:
                within = (f" The difference is within the spread between seeds (standard deviation up to "
                          f"{spread:.2f}): not a clear difference." if abs(mean - base) <= spread else "")
            else:  # (one seed: "91.00% beats CNN (91.40%)" on 500 images, two of them, said no more)
                both = [*view.by_pair.get((row_key, col_key), []), *view.by_pair.get((row.baseline, col_key), [])]
                noise = _test_noise(both, mean, base)
                within = (f" The difference is within twice the sampling noise of {noise[1]:,} test images "
                          f"({noise[0]:.2f} points): not a clear difference."
                          if noise is not None and abs(mean - base) <= noise[0] else "")
            checks.append(f"- {row.label} on {col.label}: {mean:.2f}% {verdict} {experiment.row(row.baseline).label} "
                          f"({base:.2f}%).{within}")
        paper = experiment.paper.get((row_key, col_key))
        if paper is not None:
            gaps.append(f"{view.label(row_key, col_key)}: {mean - paper:+.2f} points")
    lines = []
    if checks:
        lines += ["Each transformer model against its own baseline (same classifier, same recipe):", "", *checks, ""]
    if gaps:
        lines += ["Ours minus the paper: " + "; ".join(gaps) + ".", ""]
    lines += _against_standard(experiment, view.budget, cells, means)
    misses = _misses(experiment, view.by_pair)
    if misses:
        lines += ["Cells more than 0.3 points above the paper, with the training error at the end of the run "
                  "(averaged over the last epoch; a training error as high as the test error means the model had not converged when the "
                  "budget ran out; a low one, that it overfits):", "", *misses, ""]
    return lines


def _runs_table(view: _BudgetView) -> list[str]:
    """One line per finished run: errors, iterations, time, speed, θ."""
    lines = ["### Runs", "",
             "| model | dataset | seed | test error (%) | best epoch (%) | train error (%) | iterations | "
             "wall time | images/s | θ distance from identity | finished |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in view.in_table_order(view.records):
        theta = ", ".join(f"{t['distance']:.2f}" for t in r.get("theta", [])) or "–"
        lines.append(
            f"| {view.experiment.row(r['row']).label} | {view.experiment.column(r['column']).label} | {r['seed']} | "
            f"{r['error']:.2f} | {r['best_error']:.2f} | {r['train_error']:.2f} | {r['steps']:,} | "
            f"{_minutes(r['wall_seconds'])} | {r['images_per_s']:,.0f} | {theta} | {r.get('finished', '')} |"
        )
    lines.append("")
    return lines


#: the per-bin analyses of a record: its key, the bounds' key, what the table is split by, a bin's header
_SPLITS = (
    ("by_rotation", "degrees", "by the rotation of the test digit (|angle|)",
     lambda lo, hi, last: f"{lo:.0f}-{hi:.0f}°"),
    ("by_scale", "scale", "by the scale of the test digit (its size on the canvas over its size in MNIST's "
     "28-pixel frame; the test set's fifths)", lambda lo, hi, last: f"{lo:.2f}-{hi:.2f}"),
    # the top bin is open: a homography can send a corner past its horizon (shifts of 1,000 px)
    ("by_shift", "pixels", "by the shift of the test digit's distortion (px: RMS movement of its corners or "
     "control points beyond a uniform scale; the test set's quarters, its most distorted tenth apart)",
     lambda lo, hi, last: f"≥ {lo:.1f}" if last else f"{lo:.1f}-{hi:.1f}"),
)


def _split_tables(view: _BudgetView) -> list[str]:
    """Per column with a per-bin analysis (:func:`error_splits`): the test error in each bin."""
    lines = []
    for key, bounds, title, header in _SPLITS:
        for col in view.columns:
            split = [r for r in view.records if r.get(key) and r["column"] == col.key]
            if not split:
                continue
            bins = [tuple(b[bounds]) for b in split[0][key]]
            heads = [header(lo, hi, i == len(bins) - 1) for i, (lo, hi) in enumerate(bins)]
            lines += [f"Test error (%) on {col.label} {title}:", "",
                      "| model | seed | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(bins)]
            for r in view.in_table_order(split):
                errors = {tuple(b[bounds]): b["error"] for b in r[key]}
                lines.append(f"| {view.experiment.row(r['row']).label} | {r['seed']} | "
                             + " | ".join(f"{errors[b]:.2f}" if b in errors else "" for b in bins) + " |")
            lines.append("")
    return lines


def _warnings_and_pending(view: _BudgetView) -> list[str]:
    lines = []
    warned = [r for r in view.records if r.get("warnings")]
    for r in warned:
        lines.append(f"- warning in {view.label(r['row'], r['column'])}, seed {r['seed']}: {'; '.join(r['warnings'])}")
    if warned:
        lines.append("")
    pending = [view.label(a, b) for a, b in view.pairs if (a, b) not in view.by_pair]
    if pending:
        lines += [f"Not run yet at this budget: {', '.join(pending)}.", ""]
    return lines


def _superseded(view: _BudgetView) -> list[str]:
    """Records of this budget from an earlier recipe: their error and what changed since, in no table."""
    if not view.superseded:
        return []
    records = view.in_table_order(view.superseded)
    changed = [recipe_changes(view.experiment, r) for r in records]
    gone = [any(k in GONE_KEYS and now is None for k, (_, now) in c.items()) for c in changed]
    replaced = ("rerunning the command replaces them" if not any(gone) else
                "rerunning the command replaces them, but for those of a budget, row, column or cell the experiment "
                "no longer has, which no command reruns" if not all(gone) else
                "they are of a budget, row, column or cell the experiment no longer has, which no command reruns")
    lines = [f"Runs of budget `{view.budget}` with an earlier recipe (in none of the tables above; {replaced}):", ""]
    for r, c in zip(records, changed):
        changes = ", ".join(f"`{k}` {then!r} → {now!r}" if k not in GONE_KEYS or now is not None
                            else f"{k} {then!r} no longer in {view.experiment.name}"
                            for k, (then, now) in c.items())
        lines.append(f"- {view.label(r['row'], r['column'])}, seed {r['seed']}: {r['error']:.2f}% "
                     f"({r.get('finished', 'undated')}); since changed: {changes}")
    return [*lines, ""]


def _provenance(view: _BudgetView) -> list[str]:
    """The machines, the commands and the recipe that produced the runs."""
    lines = []
    machines = {tuple(sorted(r["machine"].items())) for r in view.records if "machine" in r}
    if machines:
        lines += ["Machine(s):", ""]
        for m in sorted(machines):
            d = dict(m)
            lines.append(f"- {d.get('cpu')}, {d.get('cores')} cores ({d.get('threads')} torch threads), "
                         f"device {d.get('device')}, torch {d.get('torch')}, torchstn {d.get('torchstn')}, "
                         f"python {d.get('python')}")
        lines.append("")
    commands = sorted({r["command"] for r in view.records if r.get("command")})
    if commands:
        lines += ["Commands that produced these runs:", "", "```", *commands, "```", ""]
    columns = [_settings(c.label, {**c.model_args, **c.data_kwargs, **c.budgets.get(view.budget, {})})
               for c in view.columns]
    rows = [_settings(r.label, {**r.model_args, **r.config, **r.budgets.get(view.budget, {})}) for r in view.rows]
    recipe = view.experiment.recipes[view.budget]
    lines += ["Recipe: " + ", ".join(f"`{k}={v}`" for k, v in recipe.items()) + " (per-column overrides: "
              + ("; ".join(filter(None, columns)) or "none") + "; per-row overrides: "
              + ("; ".join(filter(None, rows)) or "none") + ").", ""]
    return lines


def _settings(label: str, settings: dict[str, Any]) -> str:
    """``label: `k=v`, ...`` for a row's or a column's own settings (floats to 4 digits); "" for none."""
    if not settings:
        return ""
    return f"{label}: " + ", ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`"
                                    for k, v in settings.items())


def _figures_section(view: _BudgetView, cells: dict[str, dict[str, Any]], results_dir: Path) -> list[str]:
    """The headline cell's figure inline, links to the others: of figures drawn from a record in the
    table (a figure left by an earlier recipe's run shows a model that is in no table)."""
    figures = []
    for row_key, col_key in view.pairs:
        path = figure_path(results_dir, view.experiment.name, view.budget, row_key, col_key)
        if path.is_file() and _figure_shown(view, cells, row_key, col_key, path):
            figures.append((row_key, col_key, path))
    if not figures:
        return []
    lines = ["### What the transformers learned", ""]
    head = view.experiment.headline
    figures.sort(key=lambda f: (f[:2] != head,))
    for row_key, col_key, path in figures:
        rel = path.relative_to(results_dir)
        label = view.label(row_key, col_key)
        if (row_key, col_key) == head:
            lines += [f"![{label}]({rel.as_posix()})", "", f"{label}: {_caption(view.experiment.column(col_key))}", ""]
        else:
            lines.append(f"- [{label}]({rel.as_posix()})")
    lines.append("")
    return lines


def _caption(column: Column) -> str:
    """What the headline figure of a column's data shows (see :func:`write_figure`)."""
    if column.data.lower().startswith("ucr:"):
        return ("test series (black) with the warps the transformer applies to them (colours: a P-STN's sampled "
                "θ), above the time maps T_θ(t) behind those warps (dashed: the identity).")
    if column.data == "mnist-3d":
        return ("test volumes summed along depth as the baseline sees them (top), after the 3-D transformer (middle: "
                "what the classifier reads) and after it seen from the side (bottom).")
    return ("test inputs with the predicted warp drawn on them (top), the transformer's output (below), and the "
            "training curves.")


def render_report(experiment: Experiment, results: Results, results_dir: str | Path, budget: str | None = None) -> str:
    """The markdown report of every budget with finished cells (and ``budget``, even if empty).

    Sections come in a fixed order (standard, long, paper, quick), whichever budget ran last.
    """
    results_dir = Path(results_dir)
    budgets_present = {r.get("budget") for r in results.cells.values()}
    budgets = [b for b in BUDGETS if b in budgets_present or b == budget]
    budgets.sort(key=lambda b: {"standard": 0, "long": 1, "paper": 2, "quick": 3}[b])
    budgets += sorted(b for b in budgets_present - set(BUDGETS) if isinstance(b, str))  # (its runs: listed apart)
    out = _relative(results_dir)
    out_option = "" if Path(out) == Path(DEFAULT_OUT) else f" --out {shlex.quote(str(out))}"
    lines = [
        f"# `{experiment.name}`: {experiment.title}",
        "",
        f"Paper: {experiment.source}.",
        "",
        f"Ours: the runs recorded in `{results.path.name}` beside this file"
        + ("; beside each, the paper's number. " if _has_paper(experiment) else " (no paper number is entered for "
           "these cells: the notes say why). ") +
        f"Written by `torchstn reproduce {experiment.name}` from that record; not edited by hand. Rerun the "
        "command to continue (with the `--runs` and `--data-dir` of the commands that produced the runs, listed "
        "with each budget): finished cells are skipped and an interrupted one resumes from its last checkpoint.",
        "",
        "```",
        *(f"torchstn reproduce {experiment.name} --budget {b}{out_option}"
          for b in [b for b in budgets if b in experiment.recipes] or ["standard"]),
        "```",
        "",
    ]
    for b in budgets:
        lines += _budget_section(experiment, b, results.cells, results_dir)
    if experiment.notes:
        # (a record written elsewhere carried "listed apart as an earlier recipe" of cells it never had)
        lines += ["## Notes", "", f"The experiment's notes, measured for the project's committed record "
                  f"(`results/{experiment.name}.json` of a checkout): the cells and records they speak of are that "
                  "record's.", "", *[f"- {n}" for n in experiment.notes], ""]
    return "\n".join(lines).rstrip() + "\n"


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (what a recorded command should say)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def write_report(experiment: Experiment, results: Results, results_dir: str | Path, budget: str | None = None) -> Path:
    """Write ``<results_dir>/<experiment>.md`` (atomically) from the record as the file holds it
    now, under its lock: another command adding to the same record meanwhile (``--only`` runs
    side by side) had its cell dropped from a report rendered from this one's older copy."""
    from torchstn.engine import atomic_write

    path = Path(results_dir) / f"{experiment.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    with results.locked():
        results.reload()
        text = render_report(experiment, results, results_dir, budget)
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return path

