"""Policy lookup by name or run directory: `load_policy("scripted" | "random" | RUN_DIR)`.

A registered policy type is a loader `load(run_dir, config) -> PolicyFactory`, and a
`PolicyFactory` builds one policy per environment (`factory(env) -> Policy`), so policies with
per-episode state (action-chunk queues) or privileged access (scripted experts) get their own
instance. A trained policy's run directory holds `policy.json` naming its type, for example
`{"type": "vla", ...}`; the remaining keys are passed to the loader as `config`.

A factory whose policies never look at camera images sets `factory.uses_images = False`; the
evaluator then builds state-only envs (no rendering) for it, unless videos are asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmmm.policies.base import Policy
from fmmm.registry import Registry

PolicyFactory = Callable[[Any], Policy]

policy_registry = Registry("policy")
policy_registry.lazy("scripted", "fmmm.policies.scripted")
policy_registry.lazy("random", "fmmm.policies.random")
policy_registry.lazy("vla", "fmmm.policies.vla")


def load_policy(source: str, options: dict[str, Any] | None = None) -> PolicyFactory:
    """Factory for the policy named `source`, or for the trained policy in run directory `source`.

    `options` replace values of the run's policy.json for this load only, such as the inference
    settings `flow_steps` or `execute` (`fmmm.eval --policy-option flow_steps=7`); a key the
    policy does not have is an error naming it.
    """
    path = Path(source)
    if source in policy_registry and not path.exists():
        if options:
            raise ValueError(
                f"policy options ({', '.join(options)}) need a run directory, not {source!r}"
            )
        return policy_registry.get(source)(None, {})
    if not path.exists():
        known = ", ".join(n for n in policy_registry.names() if n != "vla")
        raise ValueError(
            f"policy {source!r} is neither a known name ({known}) nor an existing path"
        )
    spec_path = path / "policy.json" if path.is_dir() else path
    if spec_path.name != "policy.json" or not spec_path.is_file():
        raise ValueError(f"policy run directory {path} has no policy.json")
    try:
        config = json.loads(spec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt {spec_path}: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise ValueError(f"{spec_path} must be a JSON object with a string 'type'")
    kind = config.pop("type")
    config.update(options or {})
    try:
        loader = policy_registry.get(kind)
    except KeyError as exc:
        raise ValueError(f"{spec_path}: {exc.args[0]}") from None
    return loader(spec_path.parent, config)
