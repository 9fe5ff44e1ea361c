"""The ``sparsekit-graph`` command line: plan, show, prune, graph."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .errors import SparseKitError
from .plan.planner import plan as make_plan
from .plan.schema import Plan
from .prune.api import PruneReport
from .prune.api import prune as prune_model
from .prune.calibrate import load_calibration
from .prune.io import save_pruned
from .zoo import load_spec

app = typer.Typer(add_completion=False, help="Structured pruning that understands the model's graph.")
console = Console(emoji=False)  # "hf:llama:" is a model spec, not an emoji code


def _fail(e: SparseKitError) -> None:
    console.print(f"[red]error:[/red] {e}")
    raise typer.Exit(2)


@app.command()
def plan(
    spec: str = typer.Argument(..., help="torchvision:resnet18, timm:NAME or file.py:factory"),
    out: Path = typer.Option(Path("plan.json"), "-o", "--out", help="Where to write the plan (JSON)."),
    ignore: list[str] = typer.Option([], "--ignore", help="Module or parameter names to pin."),
) -> None:
    """Infer the coupling groups of a model and write them as a JSON plan."""
    try:
        model, inputs = load_spec(spec)
        t0 = time.perf_counter()
        p = make_plan(model, inputs, ignore=ignore)
    except SparseKitError as e:
        _fail(e)
    p.save(out)
    console.print(
        f"planned {spec} in {time.perf_counter() - t0:.3f}s: {len(p.groups)} groups, {len(p.prunable)} prunable -> {out}"
    )


@app.command()
def show(path: Path = typer.Argument(..., help="A plan.json")) -> None:
    """Print a plan as a table."""
    try:
        p = Plan.load(path)
    except SparseKitError as e:
        _fail(e)
    table = Table(title=f"{p.model}: {len(p.groups)} groups")
    for col in ("group", "size", "prunable", "zero-inv", "members", "reason"):
        table.add_column(col)
    for g in p.groups:
        table.add_row(
            g.name,
            str(g.size),
            "yes" if g.prunable else "no",
            "yes" if g.zero_invariant else "no",
            str(len(g.members)),
            g.reason or "",
        )
    console.print(table)


def _report_table(spec: str, r: PruneReport, seconds: float) -> Table:
    t = Table(title=f"{spec}: pruned in {seconds:.2f}s")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_column("kept", justify="right")
    t.add_row("parameters", f"{r.params_before:,}", f"{r.params_after:,}", f"{r.params_ratio:.1%}")
    t.add_row("MACs", f"{r.macs_before:,}", f"{r.macs_after:,}", f"{r.macs_ratio:.1%}")
    return t


@app.command()
def prune(
    spec: str = typer.Argument("torchvision:resnet18", help="Model spec (default: torchvision:resnet18)."),
    ratio: float = typer.Option(0.5, "--ratio", help="Fraction of channels removed per group."),
    plan_path: Path | None = typer.Option(None, "--plan", help="Use this plan instead of planning."),
    out: Path = typer.Option(Path("pruned"), "-o", "--out", help="Directory for plan, masks and weights."),
    importance: str = typer.Option("l2", help="l2, l1, random, taylor or activation (these two need --calibration)."),
    calibration: str | None = typer.Option(
        None, "--calibration", help="file.py:factory returning batches, or (batches, loss_fn) for taylor."
    ),
    global_ranking: bool = typer.Option(False, "--global", help="Rank channels across groups."),
    round_to: int | None = typer.Option(None, "--round-to", help="Keep multiples of this many channels."),
    uniform: bool = typer.Option(False, "--uniform", help="One kept count for like groups (HF models reload)."),
) -> None:
    """Prune a model and save it (plan.json, masks.json, model.safetensors; a Hugging Face model
    whose config describes the result also as save_pretrained in DIR/hf)."""
    try:
        model, inputs = load_spec(spec)
        t0 = time.perf_counter()
        p = Plan.load(plan_path) if plan_path else make_plan(model, inputs)
        batches, loss_fn = load_calibration(calibration) if calibration else (None, None)
        result = prune_model(
            model,
            p,
            ratio=ratio,
            importance=importance,
            calibration=batches,
            loss_fn=loss_fn,
            global_ranking=global_ranking,
            round_to=round_to,
            uniform=uniform,
        )
    except SparseKitError as e:
        _fail(e)
    seconds = time.perf_counter() - t0
    save_pruned(result, out)
    console.print(_report_table(spec, result.report, seconds))
    console.print(f"{len(p.prunable)} of {len(p.groups)} groups pruned; saved to {out}/")
    if result.report.reloadable:
        result.model.save_pretrained(out / "hf")  # type: ignore[operator]
        console.print(f"Hugging Face model saved with save_pretrained to {out}/hf (from_pretrained reloads it)")
    elif result.report.reloadable is False:
        console.print("per-layer counts differ: no config describes the model (try --uniform); load it with load_pruned")


@app.command()
def graph(
    spec: str = typer.Argument(..., help="Model spec."),
    out: Path = typer.Option(Path("graph.svg"), "-o", "--out", help="Output file (.svg, .png or .dot)."),
) -> None:
    """Draw the channel groups of a model (graphviz 'dot' needed for svg/png)."""
    from .viz import write_group_graph

    try:
        model, inputs = load_spec(spec)
        write_group_graph(model, inputs, out)
    except SparseKitError as e:
        _fail(e)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    app()
