"""AlignGPT's alignment levels and gate, in plain torch (docs/method.md#the-gate). Knows nothing of LLaVA.

- Pre-training: the alignment token of a sample is the embedding of its CLIP level, `E[level]`.
- Instruction tuning: a gate reads the image tokens against the mean text embedding and gives softmax
  weights `w` over the "local" levels 0..N-2; the token is `w @ E[0:N-1] + E[N-1]` (`E[N-1]`, the
  highest level, is the "global" part). Ablations replace that combination (`AlignmentConfig.mode`).

The gate of the public code reads exactly 576 image tokens (one 336 px image, 14 px patches): that is
`gate_input="fixed"` with `gate_tokens=576`. `gate_input="pooled"` averages the scores down to
`gate_tokens` for any number of image tokens (LLaVA-1.6 any-resolution images, other vision towers).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Mode = Literal["adaptive", "local", "global", "no_gate", "fixed_level"]
MODES: tuple[str, ...] = ("adaptive", "local", "global", "no_gate", "fixed_level")
GATE_INPUTS: tuple[str, ...] = ("fixed", "pooled")
GATE_TEXTS: tuple[str, ...] = ("all", "prompt")


@dataclass
class AlignmentConfig:
    """Everything about the alignment levels; saved in the model config as `alignment`."""

    num_levels: int = field(default=8, metadata={"help": "N, the number of CLIP-similarity levels (>= 2)",
                                                  "metavar": "N"})
    gate_hidden_size: int = field(default=256, metadata={"help": "width of the gate's hidden layer"})
    gate_tokens: int = field(default=576, metadata={"help": "image-token scores the gate reads (public: 576)"})
    gate_input: Literal["fixed", "pooled"] = field(default="fixed", metadata={
        "help": "fixed: exactly gate_tokens image tokens, as the public code; pooled: any number, "
                "averaged down to gate_tokens"})
    gate_text: Literal["all", "prompt"] = field(default="all", metadata={
        "help": "text the gate averages: all (public code: the answer too while training) or prompt "
                "(the same text in training as at inference)"})
    mode: Mode = field(default="adaptive", metadata={
        "help": "adaptive (gate), local (weighted levels only), global (top level only), no_gate "
                "(mean of levels 0..N-2 plus the top level), fixed_level (level fixed_level)"})
    fixed_level: int | None = field(default=None, metadata={"help": "the level used when mode is fixed_level"})

    def __post_init__(self) -> None:
        if self.num_levels < 2:
            raise ValueError(f"num_levels={self.num_levels}: AlignGPT needs at least 2 levels (local and global)")
        for name, value, choices in (("mode", self.mode, MODES), ("gate_input", self.gate_input, GATE_INPUTS),
                                     ("gate_text", self.gate_text, GATE_TEXTS)):
            if value not in choices:
                raise ValueError(f"{name}={value!r}; choose one of {', '.join(choices)}")
        if self.gate_tokens < 1 or self.gate_hidden_size < 1:
            raise ValueError(f"gate_tokens={self.gate_tokens}, gate_hidden_size={self.gate_hidden_size}: must be >= 1")
        if self.mode == "fixed_level":
            if self.fixed_level is None or not 0 <= self.fixed_level < self.num_levels:
                raise ValueError(f"mode='fixed_level' needs fixed_level in 0..{self.num_levels - 1}, "
                                 f"got {self.fixed_level}")
        elif self.fixed_level is not None:
            raise ValueError(f"fixed_level={self.fixed_level} is only used with mode='fixed_level', not {self.mode!r}")

    def to_dict(self) -> dict:
        """The settings as a plain dict, as saved in a model config's `alignment` entry.

        Returns:
            `{field name: value}` for every field.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> AlignmentConfig:
        """The settings back from `to_dict`'s form, validated.

        Args:
            values: `{field name: value}`; fields left out take their defaults.

        Returns:
            The AlignmentConfig.

        Raises:
            ValueError: on an unknown key, or a value `__post_init__` rejects.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown alignment settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class AlignmentOutput:
    """What the alignment module returns.

    Attributes:
        token: [B, H], the alignment token of each sample.
        gate_weights: [B, N-1], softmax weights over the local levels; None where no gate ran.
    """

    token: torch.Tensor
    gate_weights: torch.Tensor | None = None


def masked_mean(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the sequence of the positions a mask keeps.

    Args:
        embeds: [B, L, H] embeddings.
        mask: [B, L], true (or 1) where a position counts.

    Returns:
        [B, H] in `embeds`' dtype; a row whose mask is all false gives zeros.
    """
    mask = mask.to(embeds.dtype).unsqueeze(-1)
    return (embeds * mask).sum(1) / mask.sum(1).clamp(min=1)


def full_weights(params: list[nn.Parameter]):
    """A context in which `params` are whole: DeepSpeed ZeRO-3 partitions parameters (they carry `ds_id`),
    so they are gathered for writing and re-partitioned after (rank 0's values win); else a no-op.
    Parameters an outer context already gathered are left to it: transformers 5 initialises missing weights
    inside its own GatheredParameters, and DeepSpeed refuses nested contexts over the same parameters.

    Args:
        params: the parameters to be read or written whole.

    Returns:
        A context manager: DeepSpeed's `GatheredParameters(..., modifier_rank=0)`, or a null context.
    """
    partitioned = [p for p in params if hasattr(p, "ds_id") and getattr(p.ds_status, "name", None) != "AVAILABLE"]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


PRIVATE_SALT = b"aligngpt_plugin.core.alignment.AlignmentModule"


def private_seed() -> int:
    """A seed for the alignment module's own draws, read from the global CPU RNG without drawing from it.

    The same global state (the same `torch.manual_seed`) gives the same seed, so the module's init stays
    reproducible; hashing the state with a salt keeps its values unrelated to what the global stream draws
    next (a fork of the global state would give the module the projector's own random numbers).

    Returns:
        A 64-bit integer.
    """
    digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes() + PRIVATE_SALT).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def private_rng():
    """A context in which the global RNG of the device new tensors are made on is seeded with
    `private_seed()`, and restored after: what the context draws leaves the global stream untouched.

    `fork_rng(devices=[])` alone saves and restores only the CPU generator: enough where the module is
    built on the CPU (transformers' default, then moved) or on the meta device (draws nothing). Where new
    tensors land on CUDA (`torch.set_default_device`, `with torch.device(...)`, DeepSpeed's `zero.Init`),
    that device's generator is forked and seeded too.
    """
    seed = private_seed()
    device = torch.empty(0).device  # where the constructors below allocate
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def is_alignment_layer(module: nn.Module) -> bool:
    """Whether `module` is one of an AlignmentModule's own layers (its gate's), which the module's
    `reset_parameters` draws: a model's weight init (transformers' `_init_weights`, which visits every
    submodule before their parent) should leave them to it, or it draws them from the global RNG first.

    Args:
        module: any module of a model.

    Returns:
        True for a layer inside an AlignmentModule (not for the AlignmentModule itself).
    """
    return getattr(module, "_alignment_layer", False)


class AlignmentModule(nn.Module):
    """The level embedding table `E` [N, hidden] and the gate over the N-1 local levels.

    Args:
        config: the alignment settings (N, the gate's shape and input, the mode).
        hidden_size: H, the LLM's hidden size (the width of `E` and of the image tokens the gate reads).

    Attributes:
        level_embeddings: `E`, [N, H], Xavier-uniform at initialisation.
        gate: Linear(gate_tokens, gate_hidden_size) -> GELU -> Linear(gate_hidden_size, N - 1).

    Building it and `reset_parameters` draw from a private stream seeded from the global RNG's state
    (`private_seed`) without advancing any global RNG; the values follow torch's usual init laws.
    """

    def __init__(self, config: AlignmentConfig, hidden_size: int):
        super().__init__()
        self.config = config
        n = config.num_levels
        # Drawn from a private stream (`private_rng`), so that building the module leaves the global RNG
        # where it was: a model that builds it before its projector (AlignGPT in LLaVA) then draws the
        # same projector for a seed as plain LLaVA does.
        with private_rng():
            self.level_embeddings = nn.Parameter(torch.empty(n, hidden_size))
            self.gate = nn.Sequential(
                nn.Linear(config.gate_tokens, config.gate_hidden_size),
                nn.GELU(),
                nn.Linear(config.gate_hidden_size, n - 1),
            )
            # The gate's Linear layers initialise themselves (under DeepSpeed ZeRO-3 they are already
            # partitioned here, so re-initialising them would fail); only the levels need their own init.
            nn.init.xavier_uniform_(self.level_embeddings)
        for layer in self.gate.modules():
            layer._alignment_layer = True  # see is_alignment_layer

    def reset_parameters(self) -> None:
        """Draws the gate's Linear layers (torch's default init) and `E` (Xavier-uniform) again, in the
        constructor's order and from the same private stream (`private_seed`), leaving every global RNG as it
        was; ZeRO-3 partitions are gathered first. A weight transformers 5 has loaded from a file
        (`_is_hf_initialized`) is left alone by transformers' guard around `torch.nn.init`."""
        with full_weights(list(self.parameters())):
            device = self.level_embeddings.device
            if device.type == "meta":  # nothing to draw into; the weights come later
                return
            generator = torch.Generator(device=device).manual_seed(private_seed())
            for layer in (self.gate[0], self.gate[2]):
                # nn.Linear.reset_parameters, with our generator
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                fan_in = layer.weight.shape[1]
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
            nn.init.xavier_uniform_(self.level_embeddings, generator=generator)

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    def level_token(self, levels: torch.Tensor) -> torch.Tensor:
        """Pre-training: the token of each sample's level.

        Args:
            levels: [B] integers in 0..N-1 (any integer dtype, any device).

        Returns:
            `E[levels]`, [B, H].

        Raises:
            ValueError: naming the levels outside 0..N-1.
        """
        levels = levels.to(self.level_embeddings.device).long()
        bad = (levels < 0) | (levels >= self.num_levels)
        if bad.any():
            raise ValueError(f"alignment levels {levels[bad].tolist()} are outside 0..{self.num_levels - 1}")
        return self.level_embeddings[levels]

    def gate_scores(self, image_tokens: torch.Tensor | list[torch.Tensor], text_mean: torch.Tensor) -> torch.Tensor:
        """The gate's input, d_i = <image_token_i, t>.

        Args:
            image_tokens: projected image tokens, [B, T, H], or a list of B tensors [T_b, H] (one per sample:
                image lists, any-resolution views).
            text_mean: t, the mean text embedding of each sample, [B, H].

        Returns:
            [B, gate_tokens]: the T scores of each sample, or (gate_input='pooled') their adaptive average
            down to gate_tokens values.

        Raises:
            ValueError: T != gate_tokens with gate_input='fixed'.
        """
        if isinstance(image_tokens, (list, tuple)):
            if not image_tokens:
                return text_mean.new_zeros(0, self.config.gate_tokens)
            return torch.cat([self.gate_scores(x[None], t[None]) for x, t in zip(image_tokens, text_mean)])
        scores = torch.einsum("bth,bh->bt", image_tokens, text_mean.to(image_tokens.dtype))
        n = self.config.gate_tokens
        if scores.shape[1] != n:
            if self.config.gate_input == "fixed":
                raise ValueError(
                    f"the gate reads {n} image tokens (gate_input='fixed', the public AlignGPT form) but got "
                    f"{scores.shape[1]}; use gate_input='pooled' for other resolutions or vision towers")
            scores = F.adaptive_avg_pool1d(scores.unsqueeze(1).float(), n).squeeze(1).to(scores.dtype)
        return scores

    def gate_weights(self, image_tokens: torch.Tensor | list[torch.Tensor], text_mean: torch.Tensor) -> torch.Tensor:
        """Softmax weights over the local levels; the gate runs once, on the whole batch.

        Args:
            image_tokens: [B, T, H], or a list of B tensors [T_b, H] (see `gate_scores`).
            text_mean: [B, H].

        Returns:
            w, [B, N-1], rows summing to 1 (softmax in fp32, cast to the gate's dtype).
        """
        scores = self.gate_scores(image_tokens, text_mean).to(self.gate[0].weight.dtype)
        return torch.softmax(self.gate(scores).float(), dim=-1).to(scores.dtype)

    def combine(self, weights: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Instruction tuning: the token of each sample, in the configured mode.

        Args:
            weights: gate weights w, [B, N-1] (modes adaptive and local); None in the other modes.
            batch: B, the number of tokens to return (used where no weights are given).

        Returns:
            [B, H]: `w @ E[:-1] + E[-1]` (adaptive), `w @ E[:-1]` (local), `E[-1]` (global),
            `mean(E[:-1]) + E[-1]` (no_gate) or `E[fixed_level]` (fixed_level).
        """
        e = self.level_embeddings
        local, top = e[:-1], e[-1]
        mode = self.config.mode
        if mode == "fixed_level":
            return e[self.config.fixed_level].expand(batch, -1)
        if mode == "global":
            return top.expand(batch, -1)
        if mode == "no_gate":
            return (local.mean(0) + top).expand(batch, -1)
        weighted = weights.to(e.dtype) @ local
        return weighted if mode == "local" else weighted + top

    def forward(
        self,
        levels: torch.Tensor | None = None,
        image_tokens: torch.Tensor | list[torch.Tensor] | None = None,
        text_mean: torch.Tensor | None = None,
    ) -> AlignmentOutput:
        """With `levels`: the pre-training token. Otherwise the instruction-tuning token from
        `image_tokens` [B, T, H] (or a list of [T_b, H]) and `text_mean` [B, H] (the gate runs only in
        modes that use it). B may be 0: the weights are still used, with zero gradient, which keeps
        data-parallel ranks in step (see `idle_term`).

        Args:
            levels: [B] integer levels (pre-training), or None.
            image_tokens: [B, T, H] or a list of B [T_b, H] (instruction tuning, modes adaptive and local).
            text_mean: [B, H] (instruction tuning; in modes without a gate it only gives B).

        Returns:
            AlignmentOutput: `token` [B, H]; `gate_weights` [B, N-1] where the gate ran, else None.

        Raises:
            ValueError: a level outside 0..N-1, or a gate mode without image tokens and text means.
        """
        if levels is not None:
            return AlignmentOutput(self.level_token(levels))
        if self.config.mode in ("adaptive", "local"):
            if image_tokens is None or text_mean is None:
                raise ValueError(f"mode={self.config.mode!r} needs image_tokens and text_mean for the gate")
            weights = self.gate_weights(image_tokens, text_mean)
            return AlignmentOutput(self.combine(weights, weights.shape[0]), weights)
        batch = text_mean.shape[0] if text_mean is not None else len(image_tokens)
        return AlignmentOutput(self.combine(None, batch))

    def trainable(self, pretraining: bool) -> dict[str, bool]:
        """Which weights train in a stage: the levels in pre-training; the gate in instruction tuning,
        in the modes that use it (adaptive, local).

        Args:
            pretraining: True for stage 1 (pre-training), False for stage 2.

        Returns:
            `{"level_embeddings": bool, "gate": bool}`.
        """
        return {"level_embeddings": pretraining,
                "gate": not pretraining and self.config.mode in ("adaptive", "local")}


def idle_term(out: AlignmentOutput) -> torch.Tensor:
    """0, computed from an AlignmentOutput of a batch with no image: adding it to the loss's inputs keeps
    the alignment weights in the graph. Every data-parallel rank then runs the module once per step and
    reduces its gradients (DDP), and gathers its partitioned weights (ZeRO-3), whatever its batch holds;
    a rank that skipped the module would leave the others waiting. (The public code does the same with a
    dummy gate pass.)

    Args:
        out: the module's output for the batch (B may be 0).

    Returns:
        A scalar 0 connected to the level embeddings and, where the gate ran, to the gate.
    """
    term = out.token.sum() * 0
    return term if out.gate_weights is None else term + out.gate_weights.sum() * 0
