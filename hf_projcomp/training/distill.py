"""Knowledge distillation from the frozen base model already in memory (no second copy of weights),
and recovery after hard pruning with it.

:class:`Teacher` scores the base on the student's vocabulary; :class:`DistillationMixin` adds
``(1-α)·CE + α·T²·KL(teacher ‖ student)`` to any ``Trainer``.

Recovery: COMPACT (or :func:`~hf_projcomp.hard_prune`) gives a vanilla model at once; a few tens of
thousands of tokens of distillation from the base recover part of what pruning lost (reported
figures: ``docs/decisions.md#recovery-results``). :func:`distill_pruned` runs it with a plain
``transformers.Trainer`` (:class:`DistillationTrainer`): every weight of the pruned model trains on
``KL(base ‖ pruned)`` (the base's next-token distribution renormalised over the kept vocabulary), so
it learns what the base predicts on the text, not the text's own quirks. The base stays frozen and is
not copied.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch.func import functional_call
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.trainer_callback import PrinterCallback

from ..blocks import text_blocks
from ..importance.calibration import iter_calibration_texts
from ..model_ids import SCHEDULERS

if TYPE_CHECKING:
    _TrainerBase = Trainer  # the mixin's attributes and super() calls are the Trainer's
else:
    _TrainerBase = object

logger = logging.getLogger(__name__)


class Teacher:
    """A frozen base model as teacher, scored on the student's vocabulary.

    With a pruned vocabulary (``vocab_indices``: new id -> base id) the student's token ids are
    mapped back to base ids, and only the kept rows of the base LM head are applied (gathered per
    call, not stored): the teacher's distribution is the base one renormalised over the kept tokens.
    The logits come from the base model's own forward (its softcapping, logits scaling...), with the
    gathered rows swapped in for the head.
    """

    def __init__(self, base: PreTrainedModel, vocab_indices: list[int] | None = None) -> None:
        self.base = base
        head = base.get_output_embeddings()
        self.head_name = next(name for name, module in base.named_modules() if module is head)
        self.old_ids = None if vocab_indices is None else torch.tensor(vocab_indices, dtype=torch.long)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """float32 logits (batch, seq, student vocabulary)."""
        head = self.base.get_submodule(self.head_name)
        swapped = {}
        if self.old_ids is not None:
            old_ids = self.old_ids.to(input_ids.device)
            input_ids = old_ids[input_ids]
            swapped[f"{self.head_name}.weight"] = cast(torch.Tensor, head.weight).index_select(0, old_ids)
            if getattr(head, "bias", None) is not None:
                swapped[f"{self.head_name}.bias"] = cast(torch.Tensor, head.bias).index_select(0, old_ids)
        # tie_weights=False: a tied input embedding keeps every base row (the ids are base ids).
        out = functional_call(
            self.base,
            swapped,
            (),
            {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False},
            tie_weights=False,
            strict=False,
        )
        return out.logits.float()


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ KL(teacher ‖ student), number of positions)`` over the positions the causal-LM loss scores
    (those whose next label is not -100), at ``temperature``."""
    mask = labels[:, 1:] != -100
    student = F.log_softmax(student_logits[:, :-1][mask].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits[:, :-1][mask].float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="sum")
    return kl, mask.sum()


class DistillationMixin(_TrainerBase):
    """``Trainer.compute_loss`` with optional distillation, ``(1-α)·CE + α·T²·KL(teacher ‖ student)``,
    and a hard stop on a non-finite training loss. Mix in before ``transformers.Trainer`` and call
    :meth:`init_distillation` in ``__init__``; the teacher's forward time is logged as
    ``teacher_seconds``."""

    def init_distillation(self, teacher: Teacher | None, alpha: float, temperature: float = 1.0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill_alpha must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {temperature}")
        if alpha > 0 and teacher is None:
            raise ValueError("distill_alpha > 0 needs a teacher")
        self.teacher = teacher if alpha > 0 else None
        self.distill_alpha = alpha
        self.distill_temperature = temperature
        self.teacher_seconds = 0.0

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        labels = inputs.get("labels")
        teacher = self.teacher if model.training and labels is not None else None
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if teacher is not None and labels is not None:
            start = time.perf_counter()
            teacher_logits = teacher.logits(inputs["input_ids"], inputs.get("attention_mask"))
            self.teacher_seconds += time.perf_counter() - start
            kl, positions = distillation_kl(outputs.logits, teacher_logits, labels, self.distill_temperature)
            kl = self._normalize_like_loss(kl, positions, num_items_in_batch)
            loss = (1 - self.distill_alpha) * loss + self.distill_alpha * self.distill_temperature**2 * kl
        if model.training and not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.state.global_step}: stopping. Lower the learning "
                "rate (or projection_learning_rate), enable gradient clipping (max_grad_norm), or check the data."
            )
        return (loss, outputs) if return_outputs else loss

    def _normalize_like_loss(
        self, total: torch.Tensor, count: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        """A summed per-token term scaled exactly as ``Trainer.compute_loss`` scales the CE loss."""
        if not (self.model_accepts_loss_kwargs and num_items_in_batch is not None):
            return total / count.clamp(min=1)
        scaled = total / num_items_in_batch
        if self.args.average_tokens_across_devices:
            scaled = scaled * (self.accelerator.num_processes // self.get_tp_size())
        return scaled

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.teacher is not None:
            logs["teacher_seconds"] = round(self.teacher_seconds, 3)
        super().log(logs, *args, **kwargs)


@dataclass
class DistillConfig:
    """How :func:`distill_pruned` trains (serialisable with :meth:`to_dict`).

    The defaults (``learning_rate``, ``bos_each_block``, ``lr_scheduler_type``) were chosen on dev
    text by ``benchmarks/heal_gemma.py``: ``docs/decisions.md#distill-config``. ``max_tokens`` trades
    time for quality and was not chosen. For 65,536 tokens or more, pass ``learning_rate=2e-5,
    lr_scheduler_type="cosine"`` (dev's pick at those budgets, same place).

    Args:
        max_tokens: tokens trained on (whole optimizer steps of ``batch_size × block_size`` tokens).
        learning_rate: peak AdamW learning rate, for every weight.
        block_size: tokens per training sequence.
        batch_size: sequences per optimizer step.
        micro_batch_size: sequences per forward (gradients accumulate over ``batch_size /
            micro_batch_size`` of them); lower it to save memory, the step stays the same.
        warmup_steps: linear warm-up steps.
        lr_scheduler_type: one of ``SCHEDULERS``, after the warm-up.
        alpha: weight of the distillation loss; ``1 - alpha`` goes to cross-entropy on the text.
        temperature: distillation temperature.
        pool_tokens: at most this many tokens of the training text are read, and blocks are drawn
            from them at random (``seed``), so a large corpus is not tokenised for a short run.
            ``None`` reads all of it.
        bos_each_block: start every block with BOS (tokenizers that have one), as the model sees
            text when it serves; ``False`` cuts one stream (a BOS at each text's start) into blocks.
        seed: orders the blocks (and seeds the Trainer).
    """

    max_tokens: int = 32_768
    learning_rate: float = 1e-5
    block_size: int = 256
    batch_size: int = 8
    micro_batch_size: int = 4
    warmup_steps: int = 2
    lr_scheduler_type: str = "constant_with_warmup"
    alpha: float = 1.0
    temperature: float = 1.0
    pool_tokens: int | None = 262_144
    bos_each_block: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_tokens", "block_size", "batch_size", "micro_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.max_tokens < self.tokens_per_step:
            raise ValueError(
                f"max_tokens ({self.max_tokens:,}) is less than one optimizer step "
                f"(batch_size × block_size = {self.tokens_per_step:,} tokens)"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise ValueError(f"lr_scheduler_type must be one of {SCHEDULERS}, got {self.lr_scheduler_type!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.pool_tokens is not None and self.pool_tokens < self.tokens_per_step:
            raise ValueError(
                f"pool_tokens must be None or at least one step's {self.tokens_per_step:,} tokens, "
                f"got {self.pool_tokens:,}"
            )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    @property
    def max_steps(self) -> int:
        return self.max_tokens // self.tokens_per_step

    @property
    def trained_tokens(self) -> int:
        """Tokens a run trains on: ``max_tokens`` rounded down to whole steps."""
        return self.max_steps * self.tokens_per_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DistillationTrainer(DistillationMixin, Trainer):
    """A plain ``transformers.Trainer`` with distillation from a frozen teacher: the loss is
    ``(1-α)·CE + α·T²·KL(teacher ‖ student)`` (:class:`~hf_projcomp.training.DistillationMixin`).

    Args:
        teacher: the base as a :class:`~hf_projcomp.training.Teacher` (with the kept vocabulary).
        distill_alpha: α in [0, 1].
        distill_temperature: T > 0.
    """

    def __init__(
        self,
        *args: Any,
        teacher: Teacher | None,
        distill_alpha: float = 1.0,
        distill_temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.init_distillation(teacher, distill_alpha, distill_temperature)
        super().__init__(*args, **kwargs)


def distill_pruned(
    model: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: Any,
    train_data: Any,
    *,
    vocab_indices: list[int] | torch.Tensor | None = None,
    config: DistillConfig | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> PreTrainedModel:
    """Train a pruned ``model`` on ``KL(base ‖ model)`` over ``train_data``; returns it, trained in place.

    ``small, small_tok, selection = compact_prune(base, tok, text)`` then
    ``distill_pruned(small, base, small_tok, text, vocab_indices=selection.kept_token_ids)``.

    The weights train in float32 (a bf16 AdamW step of 1e-5 would mostly round away) and return to
    the model's dtype at the end. Training runs where ``base`` is (its device); the base is frozen
    and only read.

    Args:
        model: the pruned model (any vanilla causal LM); all its weights train.
        base: the model it was pruned from, the teacher.
        tokenizer: ``model``'s tokenizer (the pruned one when the vocabulary shrank).
        train_data: text in any calibration form: a ``.txt``/``.jsonl`` path, a list of strings, a
            ``datasets`` ``Dataset``/``IterableDataset`` with a ``text`` column.
        vocab_indices: base token id of each of ``model``'s ids (``CompactSelection.kept_token_ids``);
            ``None`` when the vocabulary is the base's.
        config: a :class:`DistillConfig` (default: its defaults).
        callbacks: ``TrainerCallback``s added to the Trainer's (to score along the run, log...).
        progress: progress bars (tokenising, training).
        **kwargs: fields of ``DistillConfig`` overriding ``config``'s (``max_tokens=8192``).
    """
    config = dataclasses.replace(config or DistillConfig(), **kwargs)
    vocab = _student_vocabulary(model, base, vocab_indices, config.block_size)
    blocks = _distillation_blocks(tokenizer, train_data, config, progress)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    with tempfile.TemporaryDirectory(prefix="hf_projcomp-distill-") as scratch:
        trainer = DistillationTrainer(
            model=model,
            args=_training_arguments(config, base, scratch, progress),
            train_dataset=blocks,
            data_collator=default_data_collator,
            teacher=Teacher(base, vocab) if config.alpha > 0 else None,
            distill_alpha=config.alpha,
            distill_temperature=config.temperature,
            callbacks=callbacks,
        )
        if not progress:
            trainer.remove_callback(PrinterCallback)
        _train_in_float32(trainer, model, dtypes)
    return model


def _student_vocabulary(
    model: PreTrainedModel, base: PreTrainedModel, vocab_indices: list[int] | torch.Tensor | None, block_size: int
) -> list[int] | None:
    """``vocab_indices`` as a list, checked against the two models (``ValueError`` when it does not fit,
    or when ``block_size`` exceeds the model's context)."""
    if isinstance(vocab_indices, torch.Tensor):
        vocab_indices = vocab_indices.tolist()
    student_vocab = model.get_input_embeddings().num_embeddings
    if vocab_indices is None and student_vocab != base.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"the model's vocabulary ({student_vocab:,}) differs from the base's: pass vocab_indices "
            "(CompactSelection.kept_token_ids)"
        )
    if vocab_indices is not None and len(vocab_indices) != student_vocab:
        raise ValueError(f"vocab_indices has {len(vocab_indices):,} ids for a vocabulary of {student_vocab:,}")
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and block_size > context:
        raise ValueError(f"block_size ({block_size}) exceeds the model's max_position_embeddings ({context})")
    return vocab_indices


def _block_dataset(
    tokenizer: Any, data: Any, block_size: int, max_tokens: int | None, bos_each_block: bool, progress: bool, name: str
) -> Dataset:
    """``data`` (any form :func:`~hf_projcomp.importance.calibration.iter_calibration_texts` reads) as
    ``block_size``-token blocks, labels = inputs (:func:`~hf_projcomp.blocks.text_blocks`): one stream
    of the texts as the tokenizer encodes them by default, or, with ``bos_each_block`` and a tokenizer
    with a BOS token, BOS + the next ``block_size - 1`` text tokens in every block."""
    bos = tokenizer.bos_token_id if bos_each_block else None
    blocks = text_blocks(
        tokenizer,
        iter_calibration_texts(data, name=name),
        block_size,
        bos=bos,
        add_special_tokens=bos is None,
        max_tokens=max_tokens,
        progress=progress,
        desc="Tokenising training text",
        name=name,
    )
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def _distillation_blocks(tokenizer: Any, train_data: Any, config: DistillConfig, progress: bool) -> Dataset:
    # A stream is read only as far as the run needs; finite data up to pool_tokens (blocks drawn at random).
    limit = (
        config.pool_tokens
        if isinstance(train_data, (str, Sized)) or hasattr(train_data, "__fspath__")
        else config.trained_tokens + config.block_size
    )
    blocks = _block_dataset(
        tokenizer, train_data, config.block_size, limit, config.bos_each_block, progress, "train_data"
    )
    if len(blocks) < config.batch_size:
        raise ValueError(
            f"train_data gives {len(blocks)} blocks of {config.block_size} tokens, fewer than one "
            f"step's batch_size ({config.batch_size})"
        )
    logger.info(
        "Distilling from the base: %d steps of %d tokens, drawn from %d blocks",
        config.max_steps,
        config.tokens_per_step,
        len(blocks),
    )
    return blocks


def _training_arguments(
    config: DistillConfig, base: PreTrainedModel, output_dir: str, progress: bool
) -> TrainingArguments:
    """The ``TrainingArguments`` of ``config``'s run; ``ValueError`` unless the Trainer would train where
    ``base`` is (the teacher is not moved: it may be shared or large)."""
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.batch_size // config.micro_batch_size,
        learning_rate=config.learning_rate,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=0.0,
        seed=config.seed,
        logging_steps=max(1, config.max_steps // 8),
        save_strategy="no",
        report_to=[],
        use_cpu=base.device.type == "cpu",
        disable_tqdm=not progress,
    )
    if torch.device(args.device) != base.device:
        raise ValueError(
            f"the base is on {base.device} but the Trainer trains on {args.device}: move the base "
            f"there first (base.to({str(args.device)!r}))"
        )
    return args


def _train_in_float32(trainer: Trainer, model: PreTrainedModel, dtypes: dict[str, torch.dtype]) -> None:
    """``trainer.train()`` with ``model``'s parameters in float32, returned to ``dtypes`` (by name) after,
    a stopped run (a non-finite loss, Ctrl-C) included."""
    # Parameters only: buffers a checkpoint keeps in float32 (RoPE's inv_freq, Gemma's embed_scale)
    # must stay so, or the saved model no longer reloads to the same logits.
    for param in model.parameters():
        param.data = param.data.float()
    try:
        trainer.train()
    finally:
        for name, param in model.named_parameters():
            param.data = param.data.to(dtypes[name])
        model.eval()


__all__ = [
    "SCHEDULERS",
    "DistillConfig",
    "DistillationMixin",
    "DistillationTrainer",
    "Teacher",
    "distill_pruned",
    "distillation_kl",
]
