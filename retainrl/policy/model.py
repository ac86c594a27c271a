"""Load any Hugging Face causal LM, attach LoRA (peft), and compute token log-probs.

One code path for every model: the bundled tiny Qwen2 (`retainrl/policy/assets/tiny`), a local
directory, or a hub id (Qwen2.5-Coder on a GPU machine). The reference policy for KL is the
same model with the adapter disabled (`Policy.reference()`), never a second copy.

Precision: bf16 on CUDA (fp32 LoRA weights stay trainable through autocast-free bf16 base),
fp32 on CPU. QLoRA: a 4-bit base through bitsandbytes when `quantize_4bit=True` on CUDA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

# raised inside transformers when peft wraps a model; nothing for a user to act on
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing", category=FutureWarning)

BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "tiny"


@dataclass
class ModelConfig:
    name_or_path: str = field(default="bundled", metadata={
        "help": "'bundled', a local HF model directory, or a hub id.", "check": lambda v: bool(v.strip()),
        "must": "be 'bundled', a model directory or a hub id"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank.", "check": lambda v: v >= 1, "must": "be >= 1"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r).",
                                                  "check": lambda v: v > 0, "must": "be > 0"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (0 keeps rollouts and updates consistent).",
                                                       "check": lambda v: 0 <= v < 1, "must": "be in [0, 1)"})
    target_modules: str = field(default="all-linear", metadata={
        "help": "Comma-separated module names to adapt, or 'all-linear' (every linear layer but the LM head).",
        "check": lambda v: bool(v.strip(" ,")), "must": "name at least one module, or be 'all-linear'"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={
        "help": "auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16."})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N.",
                                                  "check": lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
                                                  "must": "be auto, cpu, cuda or cuda:N"})
    quantize_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the base in 4 bit (needs CUDA and bitsandbytes)."})
    chat_template: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "auto (use the tokenizer's chat template when it has one) | on | off."})
    value_head: bool = field(default=False, metadata={"help": "Add a scalar value head (PPO)."})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave torch's default).",
                                              "check": lambda v: v >= 0, "must": "be >= 0"})
    prefix_sharing: bool = field(default=True, metadata={
        "help": "Score a group's completions against one forward of their shared prompt (its KV cache "
                "repeated), not one full-row forward each: same log-probs and gradients, less compute."})


class ModelLoadError(ValueError):
    """The model cannot be loaded; the message names the path or id and what is missing."""


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*")


def _missing_model_files(path: Path) -> list[str]:
    """What a Hugging Face model directory lacks, in words (empty: nothing)."""
    names = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json (the architecture)")
    if not (names & set(_WEIGHTS)):
        missing.append("weights (model.safetensors or pytorch_model.bin, or their .index.json for shards)")
    if not ("tokenizer.json" in names or "tokenizer.model" in names or {"vocab.json", "merges.txt"} <= names
            or "vocab.txt" in names):
        missing.append("tokenizer files (tokenizer.json, or vocab.json + merges.txt, or tokenizer.model)")
    return missing


def resolve_model_path(name_or_path: str) -> str:
    """A loadable model directory or hub id; ModelLoadError naming the path and what it lacks.

    A name that exists on disk is a directory and must hold a whole model; a name that does not
    exist is sent to the hub only when it has the shape of a hub id (`org/name`): a path such as
    `./models/x`, `/abs/x` or `a/b/c` that does not exist is an error, not a repo id."""
    if name_or_path in ("bundled", "tiny", ""):
        if not (BUNDLED_MODEL / "config.json").exists():
            raise ModelLoadError(f"the bundled model is missing at {BUNDLED_MODEL}; rebuild it with "
                                 f"scripts/pretrain_tiny.py")
        return str(BUNDLED_MODEL)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path {name_or_path!r} is a file; expected a Hugging Face model directory "
                                 f"(config.json, weights and tokenizer files)")
        missing = _missing_model_files(path)
        if missing:
            raise ModelLoadError(f"model directory {str(path)!r} lacks " + "; ".join(missing))
        return str(path)
    if name_or_path.startswith((".", "~", os.sep)) or not _HUB_ID.fullmatch(name_or_path):
        raise ModelLoadError(f"model directory {name_or_path!r} does not exist (resolved to {path.resolve()})")
    # `org/name` that is not a folder here: a hub id (it could also be a mistyped relative path, so say so)
    warnings.warn(f"model {name_or_path!r}: no such local directory (in {Path.cwd()}); trying it as a Hugging Face "
                  f"hub id", stacklevel=2)
    return name_or_path


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


class ValueHead(torch.nn.Module):
    """Scalar value per token from the backbone's last hidden state (fp32)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T)
        return self.proj(hidden.float()).squeeze(-1)


class Policy:
    """A causal LM with a LoRA adapter (and optionally a value head)."""

    def __init__(self, model, tokenizer, device: torch.device, config: ModelConfig, value_head: ValueHead | None):
        self.model, self.tokenizer, self.device, self.config = model, tokenizer, device, config
        self.value_head = value_head
        mode = config.chat_template
        self.use_chat_template = (mode == "on") or (mode == "auto" and bool(getattr(tokenizer, "chat_template", None)))

    # -- parameters ----------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA (and value head) parameters: the only ones RL updates."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        out = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if self.value_head is not None:
            out.update({f"value_head.{n}": p for n, p in self.value_head.named_parameters()})
        return out

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.named_trainable().items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        params = self.named_trainable()
        missing = set(params) - set(state)
        if missing:
            raise KeyError(f"adapter state lacks {sorted(missing)[:3]}...")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n].to(p.device, p.dtype))

    def base_fingerprint(self) -> str:
        """sha256 of the base model's config, its frozen parameters' names and shapes, and the first
        values of each: a checkpoint taken with another model (same name, other weights) is told apart
        without hashing every weight."""
        if getattr(self, "_fingerprint", None) is None:
            # where the files lie and which transformers wrote them is not the model's identity
            conf = {k: v for k, v in self.model.config.to_dict().items()
                    if k not in ("_name_or_path", "transformers_version", "torch_dtype", "dtype")}
            h = hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode())
            for n, p in self.model.named_parameters():
                if not p.requires_grad:  # values rounded to bf16: the same model loaded in fp32 or bf16 agrees
                    h.update(f"{n}:{tuple(p.shape)}".encode())
                    h.update(p.detach().reshape(-1)[:16].to(torch.bfloat16).float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @contextlib.contextmanager
    def reference(self):
        """The reference policy: the same model with the LoRA adapter disabled."""
        with self.model.disable_adapter():
            yield

    # -- text ----------------------------------------------------------------------------
    def format_prompt(self, prompt: str) -> str:
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    # -- forward -------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_values: bool = False):
        """Logits (B, T, V) and optionally values (B, T), positions from the attention mask."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         output_hidden_states=with_values, use_cache=False)
        values = self.value_head(out.hidden_states[-1]) if with_values else None
        return out.logits, values


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) under logits: (B, T, V), (B, T) -> (B, T), without a full log-softmax copy."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _target_modules(spec: str):
    if spec == "all-linear":
        return "all-linear"
    return [s.strip() for s in spec.split(",") if s.strip()]


def load_policy(config: ModelConfig) -> Policy:
    """Load tokenizer + model, attach a fresh LoRA adapter, freeze the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    path = resolve_model_path(config.name_or_path)
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        local = Path(path).is_dir()
        raise ModelLoadError(f"cannot load the tokenizer of {path!r}: " + (
            str(e).splitlines()[0][:300] if local else
            f"no local directory of that name (in {Path.cwd()}), and the hub could not provide it "
            f"({str(e).splitlines()[0][:200]})")) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"dtype": dtype}
    if config.quantize_4bit:
        if device.type != "cuda":
            raise ValueError("quantize_4bit (QLoRA) needs a CUDA device")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
                                                           bnb_4bit_quant_type="nf4")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the model weights of {path!r}: {str(e).splitlines()[0][:300]}") from None
    if not config.quantize_4bit:
        model.to(device)
    model.config.use_cache = True
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=_target_modules(config.target_modules), task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:  # e.g. target modules that the model does not have
        raise ModelLoadError(f"model.target_modules={config.target_modules!r} does not fit {path!r}: "
                             f"{str(e).splitlines()[0][:300]}") from None
    for n, p in model.named_parameters():  # LoRA weights in fp32 for stable updates
        if p.requires_grad:
            p.data = p.data.float()
    value_head = None
    if config.value_head:
        value_head = ValueHead(model.config.hidden_size).to(device)
    return Policy(model, tokenizer, device, config, value_head)
