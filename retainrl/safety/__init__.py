"""The skill-safe layer: keep an RL update from harming protected skills.

`project(g, G, eps)` is the exact minimum-norm correction (see `retainrl.safety.project`).
"""

from retainrl.safety.project import (
    EPS_MODES,
    MAX_EXACT,
    ProjectionInfo,
    constraint_violations,
    project,
    project_sequential,
    project_with_info,
    resolve_eps,
)

__all__ = [
    "EPS_MODES",
    "MAX_EXACT",
    "ProjectionInfo",
    "constraint_violations",
    "project",
    "project_sequential",
    "project_with_info",
    "resolve_eps",
]
