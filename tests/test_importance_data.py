"""Data-driven importance (``taylor``, ``activation``), the criterion registry, and the CLI flag."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_untouched, fingerprint
from torch import Tensor, nn

import sparsekit_graph as skg
from sparsekit_graph.plan.bind import bind
from sparsekit_graph.prune.importance import IMPORTANCE, ImportanceContext, group_scores


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 5),
    )  # fmt: skip


def _scores(model: nn.Module, plan: skg.Plan, importance: str, data: list, loss_fn=None) -> dict[str, Tensor]:
    couplings = bind(plan, model)
    ctx = ImportanceContext(model, plan, {g.name: couplings[g.name] for g in plan.prunable}, data, loss_fn)
    return group_scores(importance, ctx)


@pytest.fixture
def mlp() -> tuple[_MLP, skg.Plan, list[tuple[Tensor, Tensor]]]:
    model = _MLP()
    data = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(3)]
    return model, skg.plan(model, data[0][0]), data


def test_taylor_is_w_times_summed_gradient(mlp) -> None:
    model, plan, data = mlp
    (hidden,) = plan.prunable
    got = _scores(model, plan, "taylor", data, F.cross_entropy)[hidden.name]
    ref = copy.deepcopy(model)
    for x, y in data:
        F.cross_entropy(ref(x), y).backward()
    w1, b1, w2 = ref.fc1.weight, ref.fc1.bias, ref.fc2.weight
    want = (w1 * w1.grad).abs().sum(1) + (b1 * b1.grad).abs() + (w2 * w2.grad).abs().sum(0)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-8)


def test_activation_is_column_norm_times_input_rms(mlp) -> None:
    model, plan, data = mlp
    (hidden,) = plan.prunable
    model.fc1.bias.data[:4] -= 5.0  # four channels rarely fire: small activations, same weights
    got = _scores(model, plan, "activation", [x for x, _ in data])[hidden.name]
    with torch.no_grad():
        h = torch.cat([torch.relu(model.fc1(x)) for x, _ in data])  # (tokens, 12)
        want = model.fc2.weight.norm(dim=0) * h.pow(2).mean(0).sqrt()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    r = skg.prune(model, plan, ratio=4 / 12, importance="activation", calibration=[x for x, _ in data])
    assert r.masks[hidden.name].nonzero().flatten().tolist() == torch.argsort(want)[:4].sort().values.tolist()


@pytest.mark.parametrize("importance", ["taylor", "activation"])
def test_calibration_leaves_the_model_untouched(importance: str) -> None:
    model = _cnn().train()
    x = torch.randn(4, 3, 8, 8)
    plan = skg.plan(model, x)
    model(x).sum().backward()  # grads the user already has stay as they are
    grads = {n: p.grad for n, p in model.named_parameters()}
    model[0].bias.requires_grad_(False)
    model[0].bias.grad = None
    before = fingerprint(model)
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))) for _ in range(2)]
    r = skg.prune(model, plan, ratio=0.5, importance=importance, calibration=data, loss_fn=F.cross_entropy)
    assert_untouched(model, before, importance)  # BN statistics, num_batches_tracked, flags, hooks
    assert all(p.grad is grads[n] for n, p in model.named_parameters() if n != "0.bias")
    assert model[0].bias.grad is None and not model[0].bias.requires_grad
    assert r.report.params_after < r.report.params_before
    assert r.model(x).shape == (4, 5)


def test_data_criteria_rank_differently_from_weights() -> None:
    """On a trained CNN the criteria disagree with l2 on some channels, and all give the same size."""
    torch.manual_seed(0)
    model = _cnn()
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 5, (64,))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    plan = skg.plan(model, x[:2])
    data = [(x[:32], y[:32]), (x[32:], y[32:])]
    results = {imp: skg.prune(model, plan, ratio=0.5, importance=imp, calibration=data, loss_fn=F.cross_entropy)
               for imp in ("l2", "taylor", "activation")}  # fmt: skip
    sizes = {r.report.params_after for r in results.values()}
    assert len(sizes) == 1
    for imp in ("taylor", "activation"):
        assert any(not torch.equal(results[imp].masks[g], results["l2"].masks[g]) for g in results[imp].masks), imp


def test_errors_name_what_is_wrong(mlp) -> None:
    model, plan, data = mlp
    with pytest.raises(skg.PlanError, match="loss_fn"):
        skg.prune(model, plan, ratio=0.5, importance="taylor", calibration=data)
    with pytest.raises(skg.PlanError, match="calibration"):
        skg.prune(model, plan, ratio=0.5, importance="activation")
    with pytest.raises(skg.PlanError, match="batch 0.*pair"):
        skg.prune(model, plan, ratio=0.5, importance="taylor", calibration=[data[0][0]], loss_fn=F.cross_entropy)
    with pytest.raises(skg.PlanError, match="calibration batch 0: the model failed"):
        skg.prune(model, plan, ratio=0.5, importance="activation", calibration=[torch.randn(2, 5)])
    with pytest.raises(skg.PlanError, match="scalar"):
        skg.prune(model, plan, ratio=0.5, importance="taylor", calibration=data, loss_fn=lambda out, y: out)
    with pytest.raises(skg.PlanError, match="no batches"):
        skg.prune(model, plan, ratio=0.5, importance="activation", calibration=[])
    with pytest.raises(skg.PlanError, match="importance must be one of"):
        skg.prune(model, plan, ratio=0.5, importance="fisher")


def test_registered_and_callable_criteria(mlp) -> None:
    model, plan, data = mlp
    (hidden,) = plan.prunable

    @skg.register_importance("last_first")
    def last_first(ctx: skg.ImportanceContext) -> dict[str, Tensor]:
        return {g.name: -torch.arange(g.size, dtype=torch.float32) for g in ctx.plan.prunable}

    try:
        r = skg.prune(model, plan, ratio=0.25, importance="last_first")
        assert r.masks[hidden.name].nonzero().flatten().tolist() == [9, 10, 11]
    finally:
        IMPORTANCE.pop("last_first")
    with pytest.raises(skg.PlanError, match=f"group {hidden.name} needs 12 scores"):
        skg.prune(model, plan, ratio=0.5, importance=lambda ctx: {hidden.name: torch.ones(3)})
    with pytest.raises(skg.PlanError, match="non-finite"):
        skg.prune(model, plan, ratio=0.5, importance=lambda ctx: {hidden.name: torch.full((12,), float("nan"))})


def test_hf_llama_heads_and_mlp() -> None:
    pytest.importorskip("transformers")
    from sparsekit_graph.zoo import hf_model

    model, inputs = hf_model("llama")
    plan = skg.plan(model, inputs)
    before = fingerprint(model)
    ids = inputs["input_ids"]

    def lm_loss(out, target: Tensor) -> Tensor:
        return F.cross_entropy(out.logits[:, :-1].flatten(0, 1), target[:, 1:].flatten())

    data = [({"input_ids": ids}, ids)]
    for imp in ("taylor", "activation"):
        r = skg.prune(model, plan, ratio=0.5, importance=imp, calibration=data, loss_fn=lm_loss, uniform=True)
        assert r.report.params_after < 0.8 * r.report.params_before
        assert r.model(**inputs).logits.shape == model(**inputs).logits.shape
        assert_untouched(model, before, imp)


def test_cli_calibration(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sparsekit_graph.cli import app

    model_file = tmp_path / "m.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)), torch.randn(2, 6)\n"
        "def data():\n    return [(torch.randn(8, 6), torch.randint(0, 3, (8,)))], nn.functional.cross_entropy\n"
    )
    runner = CliRunner()
    for imp in ("taylor", "activation"):
        out = tmp_path / imp
        r = runner.invoke(
            app, ["prune", f"{model_file}:build", "--ratio", "0.5", "--importance", imp,
                  "--calibration", f"{model_file}:data", "-o", str(out)],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert (out / "masks.json").exists()
    r = runner.invoke(app, ["prune", f"{model_file}:build", "--importance", "taylor", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "calibration" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("script", ["quality_digits", "quality_tiny_lm"])
def test_quality_scripts_quick(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The quality studies run end to end in their CI mode and print their table."""
    pytest.importorskip("sklearn" if script == "quality_digits" else "transformers")
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(script, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| removed | method |" in out and "| taylor |" in out and "| activation |" in out
