import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from timm.models.byobnet import ByoBlockCfg
from torch import nn

import isoprune

TINY = ["test_vit", "test_convnext", "test_resnet", "mobilenetv2_035", "swin_micro"]

_MAXXVIT = dict(img_size=64, embed_dim=(16, 32), depths=(1, 1), stem_width=(8, 16), transformer_dim_head=8)
_PARALLEL = dict(img_size=64, embed_dim=64, depth=2, num_heads=4, pretrained_cfg_overlay={"input_size": (3, 64, 64)})
SMALL = {
    "swin_micro": ("swin_tiny_patch4_window7_224", dict(embed_dim=24, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 4])),
    "beit_micro": ("beit_base_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)),
    "pvt_v2_micro": ("pvt_v2_b0", dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4), mlp_ratios=(2, 2, 2, 2))),
    "pvt_v2_linear_micro": ("pvt_v2_b2_li", dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4),
                                                  mlp_ratios=(2, 2, 2, 2))),
    "cait_micro": ("cait_xxs24_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)),
    # gated positional self-attention in the first two blocks, plain self-attention in the third
    "convit_micro": ("convit_tiny", dict(img_size=32, patch_size=8, embed_dim=8, num_heads=4, depth=3, local_up_to_layer=2)),
    "swinv2_cr_micro": ("swinv2_cr_tiny_224", dict(embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4), img_size=64, window_size=4)),
    "davit_micro": ("davit_tiny", dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4))),
    "davit_fl_micro": ("davit_base_fl", dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4))),
    "xcit_micro": ("xcit_nano_12_p8_224", dict(img_size=32, embed_dim=32, depth=2, num_heads=4, cls_attn_layers=2)),
    "tnt_micro": ("tnt_s_legacy_patch16_224", dict(img_size=32, patch_size=8, embed_dim=48, inner_dim=12, depth=7, num_heads_inner=2,
                                                   num_heads_outer=4)),
    "tnt_v2_micro": ("tnt_s_patch16_224", dict(img_size=32, patch_size=8, embed_dim=48, inner_dim=12, depth=2, num_heads_inner=2, num_heads_outer=4)),
    "twins_micro": ("twins_svt_small", dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                                            mlp_ratios=(2, 2, 2, 2))),
    # two blocks a stage: attention within windows, then over the spatially reduced map
    "twins_svt_micro": ("twins_svt_small", dict(embed_dims=(16, 32, 48, 64), num_heads=(2, 2, 4, 4), depths=(2, 2, 2, 2),
                                                mlp_ratios=(2, 2, 2, 2))),
    # EVA-02 as timm builds its small sizes (fused qkv with separate biases, packed SwiGLU) and its
    # base and large ones (separate q/k/v projections, SwiGLU with a norm); both with rotary embedding
    "eva02_micro": ("eva02_tiny_patch14_224", dict(img_size=56, embed_dim=48, depth=2, num_heads=3)),
    "eva02_separate_micro": ("eva02_base_patch14_224", dict(img_size=56, embed_dim=48, depth=2, num_heads=3)),
    "vit_rope_micro": ("vit_small_patch16_rope_224", dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)),
    # MaxViT/CoAtNet attention in each qkv layout (heads first or not), tensor layout (channels
    # last or NCHW) and relative position bias (table, TF table, MLP)
    "maxvit_micro": ("maxvit_pico_rw_256", dict(_MAXXVIT, transformer_window_size=(4, 4), transformer_grid_size=(4, 4))),
    "maxvit_tf_micro": ("maxvit_tiny_tf_224", dict(_MAXXVIT, transformer_window_size=(4, 4), transformer_grid_size=(4, 4))),
    "maxvit_nchw_micro": ("maxvit_tiny_tf_224", dict(_MAXXVIT, transformer_window_size=(4, 4), transformer_grid_size=(4, 4),
                                                     transformer_use_nchw_attn=True)),
    "maxxvit_rmlp_micro": ("maxxvit_rmlp_nano_rw_256", dict(_MAXXVIT, transformer_window_size=(4, 4), transformer_grid_size=(4, 4),
                                                            transformer_rel_pos_dim=16)),
    "coatnet_micro": ("coatnet_pico_rw_224", dict(_MAXXVIT, embed_dim=(16, 16, 32, 32), depths=(1, 1, 1, 1))),
    # blocks that split their channels at fixed sizes: InceptionNeXt's depthwise branches (an
    # eighth of the channels each, the rest unchanged), MambaOut's gates, values and convolution
    "inception_next_micro": ("inception_next_tiny", dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "pit_micro": ("pit_ti_224", dict(img_size=64, base_dims=[8, 8, 8], depth=[1, 1, 1], heads=[1, 2, 4],
                                     pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "fastvit_micro": ("fastvit_t8", dict(layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64), pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "res2net_micro": ("res2net50_14w_8s", dict(layers=[2, 1, 1, 1], pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    # Res2NeXt's scales are grouped convolutions (cardinality 8), each on a slice of its block's first layer
    "res2next_micro": ("res2next50", dict(layers=[1, 1, 1, 1], pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "dla_res2net_micro": ("dla60_res2net", dict(levels=(1, 1, 1, 1, 2, 1), channels=(16, 32, 64, 64, 128, 128),
                                                 pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "dla_res2next_micro": ("dla60_res2next", dict(levels=(1, 1, 1, 1, 2, 1), channels=(16, 32, 64, 64, 128, 128),
                                                   pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "levit_micro": ("levit_128s", dict(img_size=64, embed_dim=(16, 24, 32), key_dim=4, num_heads=(2, 3, 4), depth=(2, 1, 1),
                                       pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "levit_conv_micro": ("levit_conv_128s", dict(img_size=64, embed_dim=(16, 24, 32), key_dim=4, num_heads=(2, 3, 4), depth=(2, 1, 1),
                                       pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "rexnet_micro": ("rexnet_100", dict(width_mult=0.25, pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "dpn_micro": ("dpn48b", dict(k_sec=(1, 2, 1, 1), k_r=16, groups=4, inc_sec=(4, 8, 8, 8), num_init_features=8,
                                 pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "cspresnet_micro": ("cspresnet50", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "cs3darknet_micro": ("cs3darknet_focus_s", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "dpn68_micro": ("dpn68", dict(k_sec=(1, 2, 1, 1), k_r=16, groups=4, inc_sec=(4, 8, 8, 8), num_init_features=8,
                                  pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "resnest_micro": ("resnest14d", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "resnest_4s2x_micro": ("resnest50d_4s2x40d", dict(layers=[1, 1, 1, 1], pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "crossvit_micro": ("crossvit_tiny_240", dict(img_size=48, img_scale=(1.0, 2 / 3), patch_size=[12, 16], embed_dim=[24, 48],
                                                 depth=[[1, 1, 0], [1, 1, 0]], num_heads=[2, 4], mlp_ratio=[2, 2, 1])),
    "bit_micro": ("resnetv2_50x1_bit", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "ecaresnet_micro": ("ecaresnet26t", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "cecaresnet_micro": ("resnet18", dict(block_args=dict(attn_layer="ceca"), pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "fasternet_micro": ("fasternet_t0", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "mixnet_micro": ("mixnet_s", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "resnetblur_micro": ("resnetblur18", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "siglip_micro": ("vit_base_patch16_siglip_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)),
    "vit_relpos_micro": ("vit_relpos_small_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)),
    "vit_relpos_mlp_micro": ("vit_relpos_base_patch16_rpn_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)),
    "vit_srelpos_micro": ("vit_srelpos_small_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)),
    "swinv2_micro": ("swinv2_tiny_window8_256", dict(embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4), img_size=64, window_size=4)),
    "vit_hybrid_micro": ("vit_small_r26_s32_224", dict(img_size=64, embed_dim=32, depth=2, num_heads=2)),
    "hiera_micro": ("hiera_tiny_224", dict(img_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 2, 2, 1),
                                           pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "skresnet_micro": ("skresnet18", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "skresnext_micro": ("skresnext50_32x4d", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "tiny_vit_micro": ("tiny_vit_5m_224", dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_sizes=(4, 4, 4, 2),
                                                pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "efficientformerv2_micro": ("efficientformerv2_s0", dict(img_size=64, depths=(1, 1, 2, 2), embed_dims=(16, 24, 32, 48), num_vit=2,
                                                              pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "efficientformer_micro": ("efficientformer_l1", dict(img_size=64, depths=(1, 1, 1, 2), embed_dims=(16, 32, 48, 64), num_vit=1)),
    "edgenext_micro": ("edgenext_xx_small", dict(dims=(16, 24, 36, 48), depths=(1, 2, 2, 2), heads=(2, 2, 2, 2),
                                                  pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "fastvit_sa_micro": ("fastvit_sa12", dict(layers=(1, 1, 1, 2), embed_dims=(8, 16, 32, 64), pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "visformer_micro": ("visformer_tiny", dict(img_size=64, init_channels=8, embed_dim=48, depth=(1, 1, 1), num_heads=2)),
    "qwen3_vit_micro": ("qwen3_vit_88m_merge", dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, pos_embed_grid_size=8)),
    "deepseek_vit_micro": ("deepseek_vit_412m_align", dict(img_size=56, patch_size=8, embed_dim=32, depth=2, num_heads=2, out_features=48,
                                                           pretrained_cfg_overlay={"input_size": (3, 56, 56)})),
    "vit_diff_micro": ("vit_dwee_patch16_reg1_gap_256", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)),
    "vit_qk_norm_micro": ("vit_small_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, qk_norm=True)),
    "resnetv2_evos_micro": ("resnetv2_50d_evos", dict(layers=[1, 1, 1, 1], pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "regnetz_evos_micro": ("regnetz_b16_evos", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "resnet_clip_micro": ("resnet50_clip", dict(blocks=tuple(ByoBlockCfg(type="bottle", d=1, c=c, s=s, br=0.25) for c, s in ((32, 1), (64, 2), (128, 2), (256, 2))),
                                                 img_size=64, pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "samvit_micro": ("samvit_base_patch16", dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], window_size=4,
                                              neck_chans=16)),
    "samvit_abs_micro": ("samvit_base_patch16_224", dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1],
                                                          window_size=4, use_rel_pos=False, use_abs_pos=True)),
    "samvit_rope_micro": ("samvit_base_patch16_224", dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1],
                                                           window_size=4, use_rel_pos=False, use_rope=True)),
    "sam2_hiera_micro": ("sam2_hiera_tiny", dict(embed_dim=16, stages=(1, 2, 2, 1), global_att_blocks=(4,), window_spec=(4, 2, 2, 2),
                                                  pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "hieradet_micro": ("hieradet_small", dict(embed_dim=16, stages=(1, 2, 2, 1), global_att_blocks=(4,), window_spec=(4, 2, 2, 2),
                                              pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "lowformer_micro": ("lowformer_b0", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "cpubone_micro": ("cpubone_b0_bfrobust", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "efficientvit_micro": ("efficientvit_b0", dict(depths=(1, 1, 1, 2, 2), head_widths=(64, 80), pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    # windows of 3 on a 4x4 map (padded, as timm pads them) and 2x2 (one window); values 2 and 4 times as wide as keys
    "efficientvit_msra_micro": ("efficientvit_m0", dict(img_size=64, embed_dim=(32, 48, 64), key_dim=(8, 8, 8), depth=(1, 1, 1), num_heads=(2, 3, 2),
                                                        window_size=(3, 3, 3), pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    # one single-head attention in each of the last two stages, queries half and a quarter as wide as the values
    "iformer_micro": ("iformer_t", dict(dims=(16, 32, 48, 64), depths=(1, 1, 4, 3), attn_groups=(0, 0, 1, 1),
                                        pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    # single-head attention in the last two stages, on the first 16 and 24 of their 48 and 64 channels, queries and keys 8 wide
    "shvit_micro": ("shvit_s1", dict(embed_dim=(32, 48, 64), depth=(1, 2, 1), partial_dim=(8, 16, 24), qk_dim=(8, 8, 8),
                                     pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    # CoaT-Lite (serial blocks only) and CoaT (parallel blocks after them); 8 heads, timm's windows
    # for the shared position encoding (3x3 for 2 heads, 5x5 and 7x7 for 3 each)
    "coat_lite_micro": ("coat_lite_tiny", dict(img_size=64, embed_dims=(16, 32, 48, 64), serial_depths=(1, 2, 1, 1), mlp_ratios=(2, 2, 2, 2),
                                               pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "coat_micro": ("coat_tiny", dict(img_size=64, embed_dims=(16, 32, 32, 32), serial_depths=(1, 1, 1, 1), parallel_depth=6,
                                     mlp_ratios=(2, 2, 2, 2), pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    # CSATv2: a DCT stem, ConvNeXt-V2 blocks with a spatial attention from channel statistics, then
    # transformer blocks (a downsampling one first) in the last two stages
    "csatv2_micro": ("csatv2", dict(dims=(16, 24, 32, 48), depths=(1, 1, 2, 2), transformer_depths=(0, 0, 1, 1),
                                    pretrained_cfg_overlay={"input_size": (3, 128, 128)})),
    # EfficientViM: state dims half the first stage's width (the tracer read the reshapes inside
    # ``@`` as mapping one state dim onto two channels)
    "efficientvim_micro": ("efficientvim_m1", dict(embed_dim=(24, 40, 56), depths=(1, 2, 1), state_dim=(12, 7, 5),
                                                  pretrained_cfg_overlay={"input_size": (3, 128, 128)})),
    "mobilenetv4_hybrid_micro": ("mobilenetv4_hybrid_medium", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "nextvit_micro": ("nextvit_small", dict(depths=(1, 1, 5, 1), pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    # parallel blocks (ViT-22B's): an MLP's hidden units and the qkv in one projection; with
    # qk-norm, and with differential attention
    "vit_parallel_micro": ("vit_pwee_patch16_reg1_gap_256", dict(_PARALLEL)),
    "vit_parallel_qk_norm_micro": ("vit_base_patch16_xp_224", dict(_PARALLEL)),
    "vit_parallel_diff_micro": ("vit_dpwee_patch16_reg1_gap_256", dict(_PARALLEL)),
    "sequencer_micro": ("sequencer2d_s", dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 32, 48], hidden_sizes=[8, 16, 16, 16], img_size=56,
                                             pretrained_cfg_overlay={"input_size": (3, 56, 56)})),
    "mobilevitv2_micro": ("mobilevitv2_050", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "efficientnet_cc_micro": ("efficientnet_cc_b0_4e", dict(pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
    "mambaout_micro": ("mambaout_femto", dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), pretrained_cfg_overlay={"input_size": (3, 64, 64)})),
}
"""Small variants timm does not register: name -> (timm name, keyword arguments)."""


def base_of(name: str, num_classes: int = 10) -> dict:
    """``isoprune_base`` metadata for a model ``make`` builds, so save/load can rebuild it."""
    timm_name, kwargs = SMALL.get(name, (name, {}))
    return {"library": "timm", "name": timm_name, "kwargs": {**kwargs, "num_classes": num_classes}}


def make(name: str, num_classes: int = 10, seed: int = 0, **overrides) -> nn.Module:
    """A randomly initialised model in eval mode, with non-trivial BatchNorm statistics so that
    pruning mistakes show up in the outputs. ``tv:NAME`` is a torchvision model; ``overrides``
    replace keyword arguments of a timm one."""
    torch.manual_seed(seed)
    if name.startswith("tv:"):
        model = getattr(torchvision.models, name[3:])(num_classes=num_classes)
    else:
        base = base_of(name, num_classes)
        model = timm.create_model(base["name"], **{**base["kwargs"], **overrides})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.1)
    return model.eval()


def lively(model: nn.Module) -> nn.Module:
    """Weights on the scale of a trained model's (timm starts transformers' at std 0.02, where
    attention hardly moves the output and a wrong cut would go unseen), biases and position bias
    tables non-zero."""
    torch.manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.normal_(0, m.weight[0].numel() ** -0.5)
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" not in name:
                p.normal_(0, 0.2)
            elif "relative_position_bias_table" in name:
                p.normal_(0, 1)
    return model


def with_attention_biases(model: nn.Module, kinds: tuple[type, ...]) -> nn.Module:
    """``model`` (``lively``) with batch norms near identity (where every layer is followed by one,
    ``lively``'s small norm weights would leave an output that hardly depends on the input) and a
    bias per head and token pair that matters (``attention_biases`` of the attentions of ``kinds``:
    LeViT's, EfficientFormer's, TinyViT's)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, kinds):
                m.attention_biases.normal_(0, 1)
    return model


def without_norms(model: nn.Module, kinds: tuple[type, ...] = (nn.LayerNorm,)) -> nn.Module:
    """``model`` with every norm of ``kinds`` (timm's LayerNorm2d is a LayerNorm) an identity, in
    place: removing a channel is then the same as zeroing it, which a norm over the channels,
    whose statistics change, is not."""
    for name, m in list(model.named_modules()):
        if isinstance(m, kinds):
            model.set_submodule(name, nn.Identity())
    return model


def around(layer: nn.Module, width: int, out: int) -> nn.Module:
    """A convolution into ``layer`` (``width`` channels), one out of it (``out``), and a head; in
    eval mode with ``lively`` weights: a model to prune a single timm layer in."""
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), layer, nn.ReLU(), nn.Conv2d(out, 16, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return lively(model).eval()


def inputs_for(model: nn.Module, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, *isoprune._trace.input_size(model))


def layernorm_free(model: nn.Module, ratio: float) -> isoprune.Ratios:
    """``ratio`` for every isomorphic group, except groups that span a LayerNorm: removing
    channels under a LayerNorm changes its statistics, so zeroing them is not equivalent."""
    modules, overrides = dict(model.named_modules()), {}
    for iso in isoprune.isomorphic_groups(model):
        names = [n for g in iso.groups for n, _ in g.members]
        if any(isinstance(modules.get(n), nn.LayerNorm) for n in names):
            overrides[iso.signature] = 0.0
    return isoprune.Ratios(emb=ratio, heads=ratio, head_dim=ratio, mlp=ratio, default=ratio, overrides=overrides)


def assert_equivalent(model: nn.Module, ratios, atol: float = 1e-5, changes: float | None = None, inputs: torch.Tensor | None = None,
                      **kw) -> isoprune.PruningPlan:
    """Zero what the plan removes in a copy; prune the model; both must compute the same on
    ``inputs`` (traced on them too; else ``inputs_for``'s). Given ``changes``, the output must also
    move by more than that somewhere: the cut mattered."""
    x = inputs_for(model) if inputs is None else inputs
    plan = isoprune.plan(model, ratios, example_inputs=inputs, **kw)
    zeroed = isoprune.zero_out(copy.deepcopy(model), plan)
    with torch.no_grad():
        before = model(x) if changes is not None else None
    isoprune.apply_plan(model, plan)
    with torch.no_grad():
        expected, got = zeroed(x), model(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    if changes is not None:
        assert (got - before).abs().max() > changes
    return plan


def assert_saved_and_applied_again(name: str, ratios, tmp_path) -> None:
    """The model ``make`` builds for ``name``, pruned by ``ratios``: saved and loaded again
    (``isoprune.save``, ``isoprune.load``), and its plan saved, loaded and applied to a fresh one;
    both compute what it does."""
    model = make(name)
    plan = isoprune.plan(model, ratios)
    again = isoprune.apply_plan(make(name), isoprune.PruningPlan.load(plan.save(tmp_path / "plan.yaml")))
    isoprune.apply_plan(model, plan)
    loaded = isoprune.load(isoprune.save(model, tmp_path / "m", plan=plan, base=base_of(name)))
    x = inputs_for(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x))
        torch.testing.assert_close(again(x), model(x))


def assert_counts_what_timm_runs(model: nn.Module, ratios) -> None:
    """The MACs isoprune counts (on its trace, and in the plan) are those Torch-Pruning's counter
    finds on the model's own forward, before and after pruning; the cut removes some."""
    import torch_pruning as tp

    x = inputs_for(model, 1)
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, x)[0]
    plan = isoprune.plan(model, ratios)
    isoprune.apply_plan(model, plan)
    assert plan.macs["after"] == isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, x)[0] < plan.macs["before"]


@pytest.fixture
def digits_batches():
    """Real data: scikit-learn's handwritten digits as 3x32x32 images, a few batches."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).div(16).unsqueeze(1)
    x = nn.functional.interpolate(x, size=32, mode="bilinear").repeat(1, 3, 1, 1)
    y = torch.tensor(data.target)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """benchmarks/data/make_digits.py's ImageFolder: 1437 train / 360 val real digits, 32x32 RGB."""
    out = tmp_path_factory.mktemp("data") / "digits"
    script = Path(__file__).resolve().parents[1] / "benchmarks/data/make_digits.py"
    done = subprocess.run([sys.executable, script, "--out", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list((out / "train").glob("*/*.png"))) == 1437 and len(list((out / "val").glob("*/*.png"))) == 360
    return out


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A 4-block ViT for 32x32 digits (8x8 patches of 4 pixels), saved as an isoprune model directory."""
    torch.manual_seed(0)
    model = isoprune.create_model("vit_tiny_patch16_224", "none", num_classes=10, img_size=32, patch_size=4, embed_dim=48,
                                  depth=4, num_heads=3)
    isoprune.prune(model, 0.0)
    return isoprune.save(model, tmp_path_factory.mktemp("models") / "tiny_vit")


def run_cli(capsys, *argv):
    """``isoprune ARGV`` in this process: exit code, stdout and stderr."""
    from isoprune import cli

    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def torchrun(*args, processes=2):
    """`python ARGS` (one process) or `torchrun --nproc_per_node N ARGS`, which must succeed."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    done = subprocess.run([*launch, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done
