"""sparsekit-graph: structured pruning that understands the model's graph."""

from .errors import CouplingError, PlanError, ShapeMismatchError, SparseKitError, TraceError, UnreadParameters
from .graph.context import RuleContext
from .graph.rules import register_function_rule, register_method_rule, register_module_rule
from .graph.sizes import register_size_attribute
from .graph.trace import trace
from .plan.bind import bind
from .plan.planner import plan
from .plan.schema import Group, InputSpec, Member, Plan, SizeRef
from .prune.api import PruneReport, PruneResult, prune
from .prune.data_importance import InputStats, register_input_features
from .prune.importance import ImportanceContext, register_importance
from .prune.io import load_pruned, save_pruned
from .prune.surgery import register_resizer
from .train import ProximalStep

__all__ = [
    "CouplingError",
    "Group",
    "ImportanceContext",
    "InputSpec",
    "InputStats",
    "Member",
    "Plan",
    "PlanError",
    "ProximalStep",
    "PruneReport",
    "PruneResult",
    "RuleContext",
    "ShapeMismatchError",
    "SizeRef",
    "SparseKitError",
    "TraceError",
    "UnreadParameters",
    "bind",
    "load_pruned",
    "plan",
    "prune",
    "register_function_rule",
    "register_importance",
    "register_input_features",
    "register_method_rule",
    "register_module_rule",
    "register_resizer",
    "register_size_attribute",
    "save_pruned",
    "trace",
]
__version__ = "0.1.0"
