"""The ``sparsekit-graph`` command line: plan, show, prune, graph, view, check, schema, diff.

Every command prints one-line errors and exits with 2 (``--debug`` shows the traceback),
takes ``--quiet``, and shows progress on its long stages (on stderr)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ._cli import DEBUG, JSON, QUIET, Session
from .errors import PlanError
from .plan.schema import Plan

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Structured pruning that understands the model's graph.\n\n"
    "Example: sparsekit-graph prune torchvision:resnet18 --ratio 0.5 -o pruned",
)

SPEC_HELP = "Model spec: torchvision:NAME, timm:NAME, hf:llama (small config, no download) or file.py:factory."
GQA = typer.Option("kv_groups", "--gqa", help="Grouped-query attention: kv_groups or query_heads.")
IGNORE = typer.Option([], "--ignore", help="Module or parameter name to pin (repeatable).")


def _model(session: Session, spec: str) -> tuple[Any, Any]:
    from .zoo import load_spec

    with session.stage(f"building {spec}"):
        return load_spec(spec)


def _plan(session: Session, model: Any, inputs: Any, *, ignore: list[str], gqa: str) -> Plan:
    from .plan.planner import plan as make_plan

    with session.stage("planning (trace, shape pass, groups)"):
        return make_plan(model, inputs, ignore=ignore, gqa=gqa)


@app.command(epilog="Example: sparsekit-graph plan torchvision:resnet18 -o plan.json --ignore fc")
def plan(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    out: Path = typer.Option(Path("plan.json"), "-o", "--out", help="Where to write the plan (JSON)."),
    ignore: list[str] = IGNORE,
    gqa: str = GQA,
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Infer the coupling groups of a model and write them as a JSON plan."""
    s = Session(quiet, debug)
    with s.guard():
        model, inputs = _model(s, spec)
        p = _plan(s, model, inputs, ignore=ignore, gqa=gqa)
        p.save(out)
        s.print(f"planned {spec}: {len(p.groups)} groups, {len(p.prunable)} prunable -> {out}")


def _group_row(g: Any) -> dict[str, Any]:
    return {
        "name": g.name, "size": g.size, "prunable": g.prunable, "reason": g.reason, "zero_invariant": g.zero_invariant,
        "members": len(g.members), "ratio": g.ratio, "keep": g.keep,
        "min_keep": g.min_keep, "min_keep_reason": g.min_keep_reason,
    }  # fmt: skip


@app.command(epilog="Example: sparsekit-graph show plan.json --json")
def show(
    path: Path = typer.Argument(..., help="A plan.json."),
    as_json: bool = JSON,
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Print a plan's groups as a table (or JSON)."""
    s = Session(quiet, debug, as_json)
    with s.guard():
        p = Plan.load(path)
        if as_json:
            s.emit({"model": p.model, "groups": [_group_row(g) for g in p.groups]})
            return
        table = Table(title=f"{p.model}: {len(p.groups)} groups")
        table.add_column("group", no_wrap=True)
        for col in ("size", "prunable", "zero-inv", "members", "ratio", "keep", "min-keep", "reason"):
            table.add_column(col)
        for g in p.groups:
            table.add_row(
                g.name, str(g.size), "yes" if g.prunable else "no", "yes" if g.zero_invariant else "no", str(len(g.members)),
                "" if g.ratio is None else str(g.ratio), "" if g.keep is None else str(g.keep),
                "" if g.min_keep is None else str(g.min_keep), g.reason or g.min_keep_reason or "",
            )  # fmt: skip
        s.print(table)


def _report_table(spec: str, r: Any, seconds: float) -> Table:
    t = Table(title=f"{spec}: pruned in {seconds:.2f}s")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_column("kept", justify="right")
    t.add_row("parameters", f"{r.params_before:,}", f"{r.params_after:,}", f"{r.params_ratio:.1%}")
    t.add_row("MACs", f"{r.macs_before:,}", f"{r.macs_after:,}", f"{r.macs_ratio:.1%}")
    return t


@app.command(
    epilog="Examples: sparsekit-graph prune torchvision:resnet18 --ratio 0.5 -o pruned; "
    "sparsekit-graph prune hf:llama --plan edited.json --uniform --round-to 2 --json"
)
def prune(
    spec: str = typer.Argument("torchvision:resnet18", help=SPEC_HELP),
    ratio: float = typer.Option(0.5, "--ratio", help="Fraction of channels removed per group (a group's ratio/keep wins)."),
    plan_path: Path | None = typer.Option(None, "--plan", help="Use this (edited) plan instead of planning."),
    out: Path = typer.Option(Path("pruned"), "-o", "--out", help="Directory for plan, masks and weights."),
    importance: str = typer.Option("l2", "--importance", help="l2, l1, random, taylor or activation (these need --calibration)."),
    calibration: str | None = typer.Option(
        None, "--calibration", help="file.py:factory returning batches, or (batches, loss_fn) for taylor."
    ),
    global_ranking: bool = typer.Option(False, "--global", help="Rank channels across groups."),
    round_to: int | None = typer.Option(None, "--round-to", help="Keep multiples of this many channels."),
    uniform: bool = typer.Option(False, "--uniform", help="One kept count for like groups (HF models reload)."),
    ignore: list[str] = IGNORE,
    gqa: str = GQA,
    seed: int = typer.Option(0, "--seed", help="Seed of --importance random."),
    as_json: bool = JSON,
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Prune a model and save it (plan.json, masks.json, model.safetensors; a Hugging Face model
    whose config describes the result also as save_pretrained in DIR/hf)."""
    import time

    from .plan.edits import pin_ignored
    from .prune.api import prune as prune_model
    from .prune.io import save_pruned

    s = Session(quiet, debug, as_json)
    with s.guard():
        model, inputs = _model(s, spec)
        t0 = time.perf_counter()
        if plan_path is not None:
            p = pin_ignored(Plan.load(plan_path), ignore)  # prune checks it fits and its edits apply
        else:
            p = _plan(s, model, inputs, ignore=ignore, gqa=gqa)
        extra: dict[str, Any] = {"seed": seed}
        if calibration:
            from .prune.calibrate import load_calibration

            extra["calibration"], extra["loss_fn"] = load_calibration(calibration)
        with s.stage("pruning (importance, surgery, checks)"):
            result = prune_model(
                model, p, ratio=ratio, importance=importance, global_ranking=global_ranking, round_to=round_to,
                uniform=uniform, **extra,
            )  # fmt: skip
        seconds = time.perf_counter() - t0
        with s.stage(f"saving to {out}"):
            save_pruned(result, out)
            hf = out / "hf" if result.report.reloadable else None
            if hf is not None:
                result.model.save_pretrained(hf)  # type: ignore[operator]
        if as_json:
            saved = {"spec": spec, "out": str(out), "seconds": seconds, "hf": str(hf) if hf else None}
            s.emit({**saved, **result.report.model_dump()})
            return
        s.print(_report_table(spec, result.report, seconds))
        s.print(f"{len(p.prunable)} of {len(p.groups)} groups pruned; saved to {out}/")
        if hf is not None:
            s.print(f"Hugging Face model saved with save_pretrained to {hf} (from_pretrained reloads it)")
        elif result.report.reloadable is False:
            s.print("per-layer counts differ: no config describes the model (try --uniform); load it with load_pruned")


@app.command(epilog="Examples: sparsekit-graph graph torchvision:resnet18 -o g.svg; sparsekit-graph graph hf:llama -o llama.png")
def graph(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    out: Path = typer.Option(Path("graph.svg"), "-o", "--out", help="Output file: .svg, .png, .html (explorer) or .dot."),
    plan_path: Path | None = typer.Option(None, "--plan", help="Colour by this plan instead of planning."),
    ignore: list[str] = IGNORE,
    gqa: str = GQA,
    use_graphviz: bool = typer.Option(False, "--graphviz", help="Lay .svg/.png out with graphviz 'dot' (if installed)."),
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Draw the model's layers (data flow) coloured by channel group, with a legend naming every
    group; pinned groups are marked with their reason. Needs no system tools."""
    from .viz import write_picture

    s = Session(quiet, debug)
    with s.guard():
        model, inputs = _model(s, spec)
        p = Plan.load(plan_path) if plan_path else _plan(s, model, inputs, ignore=ignore, gqa=gqa)
        with s.stage(f"drawing {out}"):
            write_picture(model, inputs, p, out, graphviz=use_graphviz)
        s.print(f"wrote {out}")


@app.command(epilog="Example: sparsekit-graph view plan.json --model torchvision:resnet18 -o plan.html")
def view(
    path: Path = typer.Argument(..., help="A plan.json."),
    model_spec: str | None = typer.Option(None, "--model", help="Model spec: adds the graph with groups highlighted."),
    pruned: Path | None = typer.Option(None, "--pruned", help="A prune output directory: show the channels it kept."),
    out: Path = typer.Option(Path("plan.html"), "-o", "--out", help="The HTML file to write."),
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Write a self-contained HTML explorer of a plan: a searchable, sortable table of groups,
    the graph with the selected group highlighted, per-group edits exported as plan.json."""
    from .viz import build_scene, explorer_html, layer_graph

    s = Session(quiet, debug)
    with s.guard():
        p = Plan.load(path)
        scene = None
        if model_spec is not None:
            model, inputs = _model(s, model_spec)
            p.check(model)
            with s.stage("tracing the layer graph"):
                scene = build_scene(layer_graph(model, inputs, p))
        kept = _kept(pruned, p) if pruned is not None else None
        with s.stage(f"writing {out}"):
            out.write_text(explorer_html(p, scene, kept))
        s.print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


def _kept(directory: Path, p: Plan) -> dict[str, int]:
    try:
        removed = json.loads((directory / "masks.json").read_text())["removed"]
    except (OSError, ValueError, KeyError) as e:
        raise PlanError(f"--pruned: cannot read {directory / 'masks.json'}: {e}") from e
    return {g.name: g.size - len(removed.get(g.name, [])) for g in p.groups}


@app.command(epilog="Example: sparsekit-graph check edited.json torchvision:resnet18")
def check(
    path: Path = typer.Argument(..., help="A (possibly edited) plan.json."),
    spec: str = typer.Argument(..., help=SPEC_HELP),
    ignore: list[str] = typer.Option([], "--ignore", help="The --ignore names the plan was made with."),
    gqa: str = GQA,
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Check a plan against a model: it fits, and its edits (ratio, keep, prunable) can be
    applied; the planner's structure and safety pins are unchanged."""
    from .plan.diff import diff_plans
    from .plan.edits import check_against

    s = Session(quiet, debug)
    with s.guard():
        p = Plan.load(path)
        model, inputs = _model(s, spec)
        base = _plan(s, model, inputs, ignore=ignore, gqa=gqa)
        p.check(model)
        check_against(p, base)
        edits = diff_plans(base, p)
        s.print(f"{path} fits {spec}: {len(p.groups)} groups, {len(edits)} edits")
        for c in edits:
            s.print(f"  {c.group} {c.field}: {c.old} -> {c.new}")


@app.command(epilog="Example: sparsekit-graph schema > plan.schema.json")
def schema(debug: bool = DEBUG) -> None:
    """Print the plan file's JSON Schema (from pydantic), for editors to validate plan files."""
    with Session(False, debug).guard():
        typer.echo(json.dumps(Plan.model_json_schema(), indent=1))


@app.command(epilog="Example: sparsekit-graph diff plan.json edited.json")
def diff(
    a: Path = typer.Argument(..., help="The first plan.json."),
    b: Path = typer.Argument(..., help="The second plan.json."),
    as_json: bool = JSON,
    quiet: bool = QUIET,
    debug: bool = DEBUG,
) -> None:
    """Show what changed between two plans: groups added or removed, fields changed."""
    from .plan.diff import diff_plans

    s = Session(quiet, debug, as_json)
    with s.guard():
        changes = diff_plans(Plan.load(a), Plan.load(b))
        if as_json:
            s.emit([{"group": c.group, "field": c.field, "old": c.old, "new": c.new} for c in changes])
            return
        if not changes:
            s.print("no differences")
            return
        table = Table(title=f"{a} -> {b}: {len(changes)} changes")
        for col in ("group", "field", "old", "new"):
            table.add_column(col)
        for c in changes:
            table.add_row(c.group, c.field, str(c.old), str(c.new))
        s.print(table)


if __name__ == "__main__":
    app()
