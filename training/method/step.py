"""One CoSA training step's losses (docs/method.md, "Total objective"): what the online network learns from a batch.

`CoSALosses` turns (online network, assignment network, batch, iteration) into named loss terms. The
engine owns the optimiser, EMA, schedule and bookkeeping; this module owns the method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cosa_sdk.training.config import TrainConfig
from cosa_sdk.training.method.affinity import refine_cams
from cosa_sdk.training.method.class_paste import paste_classes, paste_generator
from cosa_sdk.training.method.contrastive import contrastive_separation_loss
from cosa_sdk.training.method.crf_loss import DenseCRFLoss
from cosa_sdk.training.method.dynamic_threshold import DynamicThreshold
from cosa_sdk.training.method.erasing import erased_cam_loss
from cosa_sdk.training.method.losses import balanced_seg_loss, classification_loss, seg_to_cam_loss
from cosa_sdk.training.method.perplexity import perplexity_weights
from cosa_sdk.training.method.pseudo_labels import (
    TeacherOutput,
    cam_pseudo_label,
    normalize_cams,
    segmentation_pseudo_label,
    teacher_fusion,
    valid_cams,
)
from cosa_sdk.training.model.network import CoSAOutput


@dataclass
class Thresholds:
    """The CPL thresholds (fixed, or searched per step when dynamic thresholds are on)."""

    high: float
    low: float
    aux_high: float
    aux_low: float


@dataclass
class PseudoLabels:
    cpl: torch.Tensor
    cpl_aux: torch.Tensor
    spl: torch.Tensor
    valid_cam: torch.Tensor


class CoSALosses(nn.Module):
    """Loss terms of one step: L_cls (+aux) always; after the loss warm-up L_c2s, L_s2c, L_reg and the
    optional paper techniques (perplexity weights on L_c2s, contrastive separation). During the warm-up
    those terms are computed and weighted by 0.0 (`warmup_zero_terms`, the released loop) or skipped.

    `batch_size` is the per-process batch (it sizes the dynamic-threshold queue); default config.batch_size.
    """

    def __init__(self, config: TrainConfig, *, grid_size: int, batch_size: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.crf = (
            DenseCRFLoss(sigma_rgb=config.crf_sigma_rgb, sigma_xy=config.crf_sigma_xy, filter=config.crf_filter)
            if config.crf_loss and config.w_reg > 0
            else None
        )
        self.dynamic: tuple[DynamicThreshold, DynamicThreshold] | None = None
        if config.dynamic_threshold:
            common = {
                "queue_rows": (batch_size or config.batch_size) * config.gmm_queue_rows_per_image,
                "grid_size": grid_size,
                "max_samples": config.gmm_max_samples,
                "fit_every": config.gmm_fit_every,
            }
            self.dynamic = (
                DynamicThreshold(init_low=config.t_low, init_high=config.t_high, seed=config.seed, **common),
                DynamicThreshold(
                    init_low=config.aux_t_low, init_high=config.aux_t_high, seed=config.seed + 1, **common
                ),
            )
        self.thresholds = Thresholds(config.t_high, config.t_low, config.aux_t_high, config.aux_t_low)

    def pseudo_labels_active(self, step: int) -> bool:
        return step > self.config.loss_warmup_iters

    @torch.no_grad()
    def teacher_maps(self, assignment: nn.Module, weak: torch.Tensor) -> TeacherOutput:
        """The assignment network's fused maps of the weak view (the teacher's only forward pass)."""
        cfg = self.config

        def fp32_maps(images: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            return tuple(None if m is None else m.float() for m in assignment.forward_all_maps(images))

        return teacher_fusion(
            fp32_maps,
            weak,
            scales=cfg.pseudo_scales,
            aux_last_scale_only=cfg.aux_last_scale_only,
            flip=cfg.pseudo_flip,
        )

    @torch.no_grad()
    def make_pseudo_labels(
        self, assignment: nn.Module, weak: torch.Tensor, labels: torch.Tensor, box: torch.Tensor
    ) -> PseudoLabels:
        return self.pseudo_labels_from(self.teacher_maps(assignment, weak), weak, labels, box)

    @torch.no_grad()
    def pseudo_labels_from(
        self, fused: TeacherOutput, weak: torch.Tensor, labels: torch.Tensor, box: torch.Tensor | None
    ) -> PseudoLabels:
        """CPLs (after refinement and, with dynamic thresholds, a tracker update) and SPL from fused maps."""
        cfg = self.config
        valid_cam, valid_aux = valid_cams(fused.cam, labels), valid_cams(fused.aux_cam, labels)
        if cfg.cam_refine:
            valid_cam, valid_aux = self.refine(weak, labels, valid_cam, valid_aux)
        if self.dynamic is not None:
            low, high = self.dynamic[0].update(valid_cam)
            aux_low, aux_high = self.dynamic[1].update(valid_aux)
            self.thresholds = Thresholds(high, low, aux_high, aux_low)
        t = self.thresholds
        return PseudoLabels(
            cpl=cam_pseudo_label(valid_cam, labels, t_high=t.high, t_low=t.low, img_box=box),
            cpl_aux=cam_pseudo_label(valid_aux, labels, t_high=t.aux_high, t_low=t.aux_low, img_box=box),
            spl=segmentation_pseudo_label(fused.seg, labels, temperature=cfg.spl_temperature),
            valid_cam=valid_cam,
        )

    def refine(
        self, weak: torch.Tensor, labels: torch.Tensor, valid_cam: torch.Tensor, valid_aux: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both valid CAMs refined over the weak view's affinity (built once) and min-max normalised again, so
        t_high / t_low still mean "a fraction of the class's peak" (docs/method.md, "CAM affinity refinement").

        Only classes present somewhere in the batch are propagated; the others are zero and stay zero."""
        cfg = self.config
        present = (labels != 0).any(dim=0).to(valid_cam.device)
        if not bool(present.any()):
            return valid_cam, valid_aux
        maps = torch.cat([valid_cam[:, present], valid_aux[:, present]], dim=1)
        refined = refine_cams(
            weak, maps, dilations=cfg.cam_refine_dilations, iterations=cfg.cam_refine_iters, scale=cfg.cam_refine_scale
        )
        main, aux = normalize_cams(refined).chunk(2, dim=1)
        out_main, out_aux = torch.zeros_like(valid_cam), torch.zeros_like(valid_aux)
        out_main[:, present], out_aux[:, present] = main, aux
        return out_main, out_aux

    def forward(
        self, online: nn.Module, assignment: nn.Module, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, float], PseudoLabels | None]:
        """(total loss, {term: value}, the teacher's pseudo-labels or None when the warm-up skips them).

        With `class_paste` the online network learns from a pasted copy of the batch and its pseudo-labels; the
        pseudo-labels returned are the teacher's own, which match `batch["weak"]`."""
        cfg = self.config
        labels, strong = batch["labels"], batch["strong"]
        active = self.pseudo_labels_active(step)
        with_terms = active or cfg.warmup_zero_terms
        pseudo = taught = None
        if with_terms or self.dynamic is not None:
            pseudo = taught = self.make_pseudo_labels(assignment, batch["weak"], labels, batch["box"])
        pasted = None
        if active and cfg.class_paste > 0:
            strong, labels, taught, pasted = paste_classes(
                strong, labels, pseudo, prob=cfg.class_paste, generator=paste_generator(cfg.seed, step)
            )
        out = _fp32(online(strong))
        l_cls = classification_loss(out.logits, labels)
        l_aux = classification_loss(out.aux_logits, labels)
        total = l_cls + l_aux
        terms = {"cls": l_cls.item(), "cls_aux": l_aux.item()}
        if pasted is not None:
            terms["pasted"] = float(pasted)
        if cfg.cam_erase > 0:
            valid = _roi(batch["box"], strong.shape[-2:], out.cam.device)
            valid = F.adaptive_avg_pool2d(valid[:, None], out.cam.shape[-2:])[:, 0] > 0.5
            l_erase = erased_cam_loss(
                out.cam, labels, threshold=cfg.cam_erase_threshold, reach=cfg.cam_erase_reach, valid=valid
            )
            total = total + cfg.cam_erase * l_erase
            terms["erase"] = l_erase.item()
        if not with_terms:
            return total, terms, pseudo
        on = 1.0 if active else 0.0
        size = strong.shape[-2:]
        seg = F.interpolate(out.seg, size=size, mode="bilinear", align_corners=False)
        weights = None
        if cfg.perplexity:
            t = self.thresholds
            weights = perplexity_weights(taught.valid_cam, labels, bg_threshold=t.high, beta=cfg.perplexity_beta)
        beta = cfg.aux_cpl_weight
        l_c2s = (1 - beta) * balanced_seg_loss(
            seg, taught.cpl, fg_alpha=cfg.fg_alpha, pixel_weights=weights
        ) + beta * balanced_seg_loss(seg, taught.cpl_aux, fg_alpha=cfg.fg_alpha, pixel_weights=weights)
        l_s2c = seg_to_cam_loss(out.cam, taught.spl)
        total = total + on * cfg.w_c2s * l_c2s + on * cfg.w_s2c * l_s2c
        terms.update(c2s=l_c2s.item(), s2c=l_s2c.item())
        if self.crf is not None:
            mean = torch.tensor(cfg.mean, device=seg.device).view(1, 3, 1, 1)
            std = torch.tensor(cfg.std, device=seg.device).view(1, 3, 1, 1)
            images = (strong * std + mean) * 255.0
            l_reg = self.crf(images, seg.softmax(1), _roi(batch["box"], size, seg.device), taught.cpl)
            total = total + on * cfg.w_reg * l_reg
            terms["reg"] = l_reg.item()
        if cfg.contrastive:
            l_csc = contrastive_separation_loss(
                out.features, out.cam, taught.spl, labels, temperature=cfg.csc_temperature
            )
            total = total + on * cfg.w_csc * l_csc
            terms["csc"] = l_csc.item()
        return total, terms, pseudo

    def state_dict_extra(self) -> dict:
        state = {"thresholds": vars(self.thresholds).copy()}
        if self.dynamic is not None:
            state["dynamic"] = [d.state_dict() for d in self.dynamic]
        return state

    def load_state_dict_extra(self, state: dict) -> None:
        self.thresholds = Thresholds(**state["thresholds"])
        if self.dynamic is not None and "dynamic" in state:
            for tracker, saved in zip(self.dynamic, state["dynamic"]):
                tracker.load_state_dict(saved)


def supervised_loss(
    online: nn.Module, batch: dict[str, torch.Tensor], *, class_loss: bool = True
) -> tuple[torch.Tensor, dict[str, float]]:
    """`--supervision full`: cross-entropy of the segmentation stream on ground-truth masks (the upper bound),
    plus the CAM head's classification loss on the image labels when `class_loss` (its class scores deploy)."""
    out = _fp32(online(batch["strong"]))
    seg = F.interpolate(out.seg, size=batch["strong"].shape[-2:], mode="bilinear", align_corners=False)
    mask = batch["mask"]
    if bool((mask == 255).all()):
        loss = seg.sum() * 0.0
    else:
        loss = F.cross_entropy(seg, mask, ignore_index=255)
    terms = {"seg_ce": loss.item()}
    if class_loss:
        l_cls = classification_loss(out.logits, batch["labels"])
        loss = loss + l_cls
        terms["cls"] = l_cls.item()
    return loss, terms


def _fp32(out: CoSAOutput) -> CoSAOutput:
    """The network's maps in float32: under bf16 autocast the forward runs in bf16, the losses and pseudo-labels
    do not (CPU autocast leaves most loss functions in the input's dtype)."""
    return CoSAOutput(*(t.float() for t in out))


def _roi(box: torch.Tensor, size: torch.Size, device: torch.device) -> torch.Tensor:
    """1 inside each image's valid box (y0, y1, x0, x1), 0 on the padding."""
    h, w = size
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    box = box.to(device)
    inside = (
        (ys >= box[:, 0, None, None])
        & (ys < box[:, 1, None, None])
        & (xs >= box[:, 2, None, None])
        & (xs < box[:, 3, None, None])
    )
    return inside.float()
