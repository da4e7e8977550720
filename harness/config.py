"""Run configuration: frozen dataclasses with defaults in code, validated in ``__post_init__``.

Precedence: defaults < preset (``grpo``/``dapo``/``dr_grpo``) < YAML file (``--config``) <
CLI flags < ``--set key=value``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError

BUDGET_KINDS = ("steps", "tokens", "flops", "seconds")
LOSS_AGGS = ("token_mean", "seq_mean_token_mean", "seq_sum_norm")
ADV_NORMS = ("std", "none")
#: lm-eval model backends of ``harness eval`` (here, not in harness.evaluate, so the CLI can
#: offer them without importing torch).
EVAL_BACKENDS = ("hf", "vllm")


def _check_choice(obj: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise HarnessError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _check_range(obj: object, name: str, lo: float, hi: float = math.inf) -> None:
    value = getattr(obj, name)
    if not isinstance(value, (int, float)) or not (lo <= value <= hi) or value != value:
        raise HarnessError(f"{name}={value!r} must be a number in [{lo}, {hi}]")


@dataclass(frozen=True)
class Budget:
    """A training budget: stop after ``amount`` of ``kind`` (steps, generated tokens, FLOPs or
    wall seconds)."""

    kind: str = "steps"
    amount: float = 20

    def __post_init__(self) -> None:
        _check_choice(self, "kind", BUDGET_KINDS)
        if not isinstance(self.amount, (int, float)) or not self.amount > 0:
            raise HarnessError(f"budget {self.kind}={self.amount!r} must be a positive number")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"steps=50"``, ``"flops=1e15"``, ``"seconds=600"``, ``"tokens=2e5"``."""
        kind, sep, amount = str(text).partition("=")
        if not sep:
            raise HarnessError(
                f"--budget {text!r}: expected KIND=AMOUNT with KIND in {', '.join(BUDGET_KINDS)}"
            )
        try:
            value = float(amount)
        except ValueError:
            raise HarnessError(f"--budget {text!r}: amount {amount!r} is not a number") from None
        if kind.strip() == "steps":
            value = int(value)
        return cls(kind.strip(), value)

    def __str__(self) -> str:
        amount = int(self.amount) if float(self.amount).is_integer() else self.amount
        return f"{self.kind}={amount:g}" if isinstance(amount, float) else f"{self.kind}={amount}"


@dataclass(frozen=True)
class LossConfig:
    """Policy-gradient loss and advantage settings (DESIGN §4). Presets fill these."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    loss_agg: str = "token_mean"
    adv_norm: str = "std"  # "std": GRPO group std normalisation; "none": Dr.GRPO mean only
    dynamic_sampling: bool = True  # DAPO: drop groups whose rewards are all equal
    overlong_mask: bool = True  # DAPO: mask truncated completions out of the loss
    kl_beta: float = 0.0  # KL(policy || base) coefficient (k3 estimator)
    normalize_weights: bool = True  # rescale method weights to mean 1 over valid tokens

    def __post_init__(self) -> None:
        _check_choice(self, "loss_agg", LOSS_AGGS)
        _check_choice(self, "adv_norm", ADV_NORMS)
        _check_range(self, "eps_low", 0.0, 1.0)
        _check_range(self, "eps_high", 0.0, 10.0)
        _check_range(self, "kl_beta", 0.0)


PRESETS: dict[str, dict[str, Any]] = {
    "grpo": dict(eps_low=0.2, eps_high=0.2, loss_agg="seq_mean_token_mean", adv_norm="std",
                 dynamic_sampling=False, overlong_mask=False),
    "dapo": dict(eps_low=0.2, eps_high=0.28, loss_agg="token_mean", adv_norm="std",
                 dynamic_sampling=True, overlong_mask=True),
    "dr_grpo": dict(eps_low=0.2, eps_high=0.2, loss_agg="seq_sum_norm", adv_norm="none",
                    dynamic_sampling=False, overlong_mask=False),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. Its hash is the run id (DESIGN §5)."""

    method: str = "uniform"
    task: str = "arith"
    model: str = "micro-arith"
    engine: str = "hf"
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    preset: str = "dapo"
    loss: LossConfig = field(default_factory=LossConfig)
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 0  # 0: the task's default
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 1e-4  # tuned for the default micro-arith model; ~1e-6 for 100M+ models
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch: int = 16  # rows per forward/backward chunk (memory bound)
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    eval_every: int = 5  # in-loop eval every N steps (0: only at the start and the end)
    eval_n: int = 100  # fixed eval subset size (first N test problems)
    checkpoint_every: int = 1  # steps between checkpoints (resume granularity)
    method_params: dict[str, Any] = field(default_factory=dict)
    task_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice(self, "preset", tuple(PRESETS))
        for name in ("prompts_per_step", "group_size", "micro_batch", "eval_n",
                     "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise HarnessError(f"{name}={value!r} must be a positive integer")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise HarnessError(f"max_new_tokens={self.max_new_tokens!r} must be an integer ≥ 0")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise HarnessError(f"eval_every={self.eval_every!r} must be an integer ≥ 0")
        _check_range(self, "temperature", 1e-6, 100.0)
        _check_range(self, "top_p", 1e-6, 1.0)
        _check_range(self, "lr", 0.0, 1.0)
        _check_range(self, "grad_clip", 0.0)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["budget"] = str(self.budget)
        return out


def _coerce(value: Any, target: Any, name: str) -> Any:
    """Turn a YAML/CLI value into the type of the default ``target``."""
    if isinstance(target, bool) or target is None and isinstance(value, str) and value in (
        "true", "false", "none", "null"
    ):
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        if text in ("none", "null") and target is None:
            return None
        raise HarnessError(f"{name}={value!r} must be true or false")
    if isinstance(target, int) and not isinstance(target, bool):
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise HarnessError(f"{name}={value!r} must be an integer") from None
        if not as_float.is_integer():
            raise HarnessError(f"{name}={value!r} must be an integer")
        return int(as_float)
    if isinstance(target, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise HarnessError(f"{name}={value!r} must be a number") from None
    return value


def parse_sets(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` → ``{"a": 1, "b.c": "x"}`` (values through :func:`parse_value`);
    an item without ``=`` or a key is an error naming ``flag``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HarnessError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = parse_value(value)
    return out


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value with YAML rules (numbers, true/false, lists)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def build_config(overrides: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from flat/dotted overrides (``loss.eps_high``, ``counterfactual.w_max``).

    Keys naming a registered method (``counterfactual.max_spans``) go to ``method_params``;
    ``task.X`` keys go to ``task_params``. Unknown keys raise with the allowed names.
    """
    base = RunConfig()
    top: dict[str, Any] = {}
    loss: dict[str, Any] = {}
    method_params: dict[str, dict[str, Any]] = {}
    task_params: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    loss_fields = {f.name for f in dataclasses.fields(LossConfig)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if key in ("method_params", "task_params") and isinstance(value, dict):
            for k, v in value.items():
                if key == "task_params":
                    task_params[k] = v
                else:
                    for kk, vv in (v or {}).items():
                        method_params.setdefault(k, {})[kk] = vv
        elif head == "loss" and rest:
            if rest not in loss_fields:
                raise HarnessError(
                    f"unknown setting '{key}'; loss fields: {', '.join(sorted(loss_fields))}"
                )
            loss[rest] = value
        elif head == "loss" and isinstance(value, dict):
            for k, v in value.items():
                if k not in loss_fields:
                    raise HarnessError(
                        f"unknown setting 'loss.{k}'; loss fields: {', '.join(sorted(loss_fields))}"
                    )
                loss[k] = v
        elif head == "task" and rest:
            task_params[rest] = value
        elif rest:
            method_params.setdefault(head, {})[rest] = value
        elif key in fields and key not in ("loss", "method_params", "task_params"):
            top[key] = value
        else:
            allowed = sorted(set(fields) - {"method_params", "task_params"})
            raise HarnessError(f"unknown setting '{key}'; allowed: {', '.join(allowed)}")
    for key, value in list(top.items()):
        if key == "budget":
            top[key] = value if isinstance(value, Budget) else Budget.parse(str(value))
        elif key in ("method", "task", "model", "engine", "preset"):
            top[key] = str(value)
        else:
            top[key] = _coerce(value, getattr(base, key), key)
    preset = top.get("preset", base.preset)
    if preset not in PRESETS:
        raise HarnessError(f"preset={preset!r} is not allowed; choose one of: {', '.join(PRESETS)}")
    loss_values = {**PRESETS[preset]}
    for key, value in loss.items():
        loss_values[key] = _coerce(value, getattr(LossConfig(), key), f"loss.{key}")
    top["loss"] = LossConfig(**loss_values)
    top["method_params"] = method_params
    top["task_params"] = task_params
    return RunConfig(**top)
