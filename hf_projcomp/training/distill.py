"""Knowledge distillation from the frozen base model already in memory (no second copy of weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..projection import ProjCompModel


class Teacher:
    """The base model of a :class:`ProjCompModel` as teacher, scored on the student's vocabulary.

    With a pruned vocabulary the student's token ids are mapped back to base ids, and only the kept
    rows of the base LM head are applied (gathered per call, not stored): the teacher's distribution
    is the base one renormalised over the kept tokens.
    """

    def __init__(self, pc: ProjCompModel) -> None:
        base = pc.base_model
        self.decoder = base.get_decoder()
        self.head = base.get_output_embeddings()
        kept = pc.projcomp_config.vocab_indices
        self.old_ids = None if kept is None else torch.tensor(kept, dtype=torch.long)
        self.softcap = getattr(base.config, "final_logit_softcapping", None)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """float32 logits (batch, seq, student vocabulary)."""
        weight, bias = self.head.weight, self.head.bias
        if self.old_ids is not None:
            old_ids = self.old_ids.to(input_ids.device)
            input_ids = old_ids[input_ids]
            weight = weight.index_select(0, old_ids)
            bias = None if bias is None else bias.index_select(0, old_ids)
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = F.linear(hidden, weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype)).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


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
