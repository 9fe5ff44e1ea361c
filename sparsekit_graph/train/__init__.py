"""Training to group sparsity: the plan's groups, proximal steps after each optimizer step.

``ProximalStep`` applies the prox of ``lam * sum_g weight_g ||w_g||`` (group lasso over the plan's
channels) after every ``optimizer.step()``: Euclidean for SGD, and for Adam/AdamW the prox in the
optimizer's own metric ``diag(sqrt(v_hat) + eps) / lr``, so the step is the proximal step of the
preconditioned update. Groups are proxed one after another in plan order, each exactly.

Under ``torch.distributed`` the same step runs on every rank. Replicated parameters (DDP) need
nothing more. FSDP2 parameters (``fully_shard``: DTensors sharded on dim 0, shards of any sizes) are
viewed on each rank's local shard; per-channel partial sums (of squares, and of the conditioned
prox's Newton terms) are all-reduced across the mesh, so no parameter is ever gathered.
"""

from .schedule import LamSchedule, ProxStats
from .step import ProximalStep

__all__ = ["LamSchedule", "ProxStats", "ProximalStep"]
