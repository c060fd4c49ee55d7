"""The privileged-state scripted expert of each task, as a registered policy (on Meta-World
tasks, Meta-World's own scripted policy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmmm.policies.factory import PolicyFactory, policy_registry


@policy_registry.register("scripted")
def load_scripted(run_dir: Path | None, config: dict[str, Any]) -> PolicyFactory:
    """Factory of `fmmm.envs.experts.ScriptedExpert`, one per env (it reads the env's state);
    Meta-World envs get Meta-World's own scripted policy (`MetaWorldExpert`)."""
    from fmmm.envs.experts import ScriptedExpert
    from fmmm.envs.metaworld import MetaWorldEnv, MetaWorldExpert

    def factory(env: Any) -> ScriptedExpert | MetaWorldExpert:
        if isinstance(env.unwrapped, MetaWorldEnv):
            return MetaWorldExpert(env)
        return ScriptedExpert(env)

    factory.uses_images = False  # the expert reads the simulator state
    return factory
