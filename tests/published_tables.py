"""The published AGW / CAJ and DEEN state dicts as tables (key -> shape), written
from the authors' model.py and resnet.py, and hand-written key correspondences."""
from __future__ import annotations


def bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {**{f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")},
            f"{prefix}.num_batches_tracked": ()}


def resnet50(prefix: str) -> dict[str, tuple[int, ...]]:
    """resnet.py's ResNet-50 (no fc): 318 entries."""
    keys = {f"{prefix}.conv1.weight": (64, 3, 7, 7), **bn(f"{prefix}.bn1", 64)}
    for layer, (planes, blocks, first_in) in enumerate(
            [(64, 3, 64), (128, 4, 256), (256, 6, 512), (512, 3, 1024)], start=1):
        out = 4 * planes
        for b in range(blocks):
            inp, p = (first_in if b == 0 else out), f"{prefix}.layer{layer}.{b}"
            keys[f"{p}.conv1.weight"] = (planes, inp, 1, 1)
            keys.update(bn(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(bn(f"{p}.bn2", planes))
            keys[f"{p}.conv3.weight"] = (out, planes, 1, 1)
            keys.update(bn(f"{p}.bn3", out))
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (out, inp, 1, 1)
                keys.update(bn(f"{p}.downsample.1", out))
    return keys


def three_resnets() -> dict[str, tuple[int, ...]]:
    return {**resnet50("thermal_module.thermal"), **resnet50("visible_module.visible"),
            **resnet50("base_resnet.base")}


def non_local(p: str, c: int, i: int = 1) -> dict[str, tuple[int, ...]]:
    """AGW's Non_local(c): inter_channels i = 1 (MSCMNet's: c // 2); g is a Sequential,
    W = conv + BN."""
    return {f"{p}.g.0.weight": (i, c, 1, 1), f"{p}.g.0.bias": (i,),
            f"{p}.W.0.weight": (c, i, 1, 1), f"{p}.W.0.bias": (c,), **bn(f"{p}.W.1", c),
            f"{p}.theta.weight": (i, c, 1, 1), f"{p}.theta.bias": (i,),
            f"{p}.phi.weight": (i, c, 1, 1), f"{p}.phi.bias": (i,)}


def agw_keys(classes: int) -> dict[str, tuple[int, ...]]:
    """AGW's / CAJ's embed_net(no_local='on', gm_pool='on')."""
    return {**three_resnets(), **non_local("NL_2.0", 512), **non_local("NL_2.1", 512),
            **non_local("NL_3.0", 1024), **non_local("NL_3.1", 1024),
            **non_local("NL_3.2", 1024), **bn("bottleneck", 2048),
            "classifier.weight": (classes, 2048)}


def mfa(n: int, high: int, low: int) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for part, inner in (("CNL", low), ("PNL", low // 2)):
        p = f"MFA{n}.{part}"
        keys.update({f"{p}.g.weight": (inner, low, 1, 1), f"{p}.g.bias": (inner,),
                     f"{p}.theta.weight": (inner, high, 1, 1), f"{p}.theta.bias": (inner,),
                     f"{p}.phi.weight": (inner, low, 1, 1), f"{p}.phi.bias": (inner,),
                     f"{p}.W.0.weight": (high, inner, 1, 1), f"{p}.W.0.bias": (high,),
                     **bn(f"{p}.W.1", high)})
    return keys


def deen_keys(classes: int, regdb: bool) -> dict[str, tuple[int, ...]]:
    """DEEN's embed_net(classes, dataset): DEE(1024) and MFA1..3, RegDB DEE(512), MFA1..2."""
    c = 512 if regdb else 1024
    keys = three_resnets()
    for branch in (1, 2):
        keys.update({f"DEE.FC{branch}{k}.weight": (c // 4, c, 3, 3) for k in (1, 2, 3)})
        keys.update({f"DEE.FC{branch}.weight": (c, c // 4, 1, 1), f"DEE.FC{branch}.bias": (c,)})
    keys.update(mfa(1, 256, 64))
    keys.update(mfa(2, 512, 256))
    if not regdb:
        keys.update(mfa(3, 1024, 512))
    return {**keys, **bn("bottleneck", 2 * c), "classifier.weight": (classes, 2 * c)}


def expected_unused(keys: dict[str, tuple[int, ...]], regdb: bool) -> set[str]:
    """Built but never run: the modality ResNets' layers, the shared ResNet's stem (and
    its layer4 in DEEN's RegDB network)."""
    never = ["visible_module.visible.layer", "thermal_module.thermal.layer",
             "base_resnet.base.conv1.", "base_resnet.base.bn1."]
    never += ["base_resnet.base.layer4."] if regdb else []
    return {k for k in keys if k.startswith(tuple(never))}


# Correspondences written out by hand from the published forward passes (the
# modality stems, block i of layer n, non-local j after layer n, the DEE branches
# with their dilations 1..3, the MFA parts).
_AGW_SPOTS = {
    "visible.stem.0.weight": "visible_module.visible.conv1.weight",
    "infrared.stem.1.running_var": "thermal_module.thermal.bn1.running_var",
    "shared.layer1.blocks.0.downsample.1.weight": "base_resnet.base.layer1.0.downsample.1.weight",
    "shared.layer4.blocks.2.conv3.weight": "base_resnet.base.layer4.2.conv3.weight",
    "shared.layer2.non_local.0.g.weight": "NL_2.0.g.0.weight",
    "shared.layer2.non_local.1.out.0.bias": "NL_2.1.W.0.bias",
    "shared.layer3.non_local.2.out.1.running_mean": "NL_3.2.W.1.running_mean",
    "shared.layer3.non_local.0.phi.weight": "NL_3.0.phi.weight",
    "neck.weight": "bottleneck.weight", "classifier.weight": "classifier.weight"}
_DEEN_SPOTS = {
    "infrared.stem.0.weight": "thermal_module.thermal.conv1.weight",
    "shared.layer1.stage.blocks.2.bn2.bias": "base_resnet.base.layer1.2.bn2.bias",
    "shared.layer1.mfa.cnl.theta.weight": "MFA1.CNL.theta.weight",
    "neck.running_var": "bottleneck.running_var"}
SPOT_CHECKS = {
    "agw": _AGW_SPOTS, "caj": _AGW_SPOTS,
    "deen": {**_DEEN_SPOTS,
             "shared.layer2.mfa.pnl.out.1.weight": "MFA2.PNL.W.1.weight",
             "shared.layer3.stage.stage.blocks.5.conv1.weight":
                 "base_resnet.base.layer3.5.conv1.weight",
             "shared.layer3.stage.mfa.cnl.g.bias": "MFA3.CNL.g.bias",
             "shared.layer3.dee.branches.0.dilated.0.weight": "DEE.FC11.weight",
             "shared.layer3.dee.branches.1.dilated.2.weight": "DEE.FC23.weight",
             "shared.layer3.dee.branches.1.project.bias": "DEE.FC2.bias",
             "shared.layer4.blocks.0.downsample.0.weight":
                 "base_resnet.base.layer4.0.downsample.0.weight"},
    "deen-regdb": {**_DEEN_SPOTS,
                   "shared.layer2.stage.stage.blocks.3.conv2.weight":
                       "base_resnet.base.layer2.3.conv2.weight",
                   "shared.layer2.stage.mfa.pnl.out.1.weight": "MFA2.PNL.W.1.weight",
                   "shared.layer2.dee.branches.0.project.weight": "DEE.FC1.weight",
                   "shared.layer2.dee.branches.1.dilated.0.weight": "DEE.FC21.weight",
                   "shared.layer3.blocks.0.conv1.weight": "base_resnet.base.layer3.0.conv1.weight"},
}


def mscmnet_parts(channels: tuple[int, ...], size: tuple[int, int]
                  ) -> dict[str, tuple[int, ...]]:
    """The published stems (four ResNet-50s and the base's stem), attention blocks and
    dead modules, key -> shape, from the facts' shape table."""
    keys = {}
    for prefix in ("visible_module.visible", "visible_moduleA.visible",
                   "thermal_module.thermal", "thermal_moduleA.thermal"):
        keys.update(resnet50(prefix))
    keys.update({k: v for k, v in resnet50("base_resnet.base").items()
                 if k.startswith(("base_resnet.base.conv1.", "base_resnet.base.bn1."))})
    c3, e = channels[3], size[0] * size[1]
    w = c3 // 4
    for i, cl in enumerate(channels):
        p = f"layerATT{i}"
        keys.update({f"{p}.ATT_narrow.weight": (w, c3, 1, 1), f"{p}.ATT_narrow.bias": (w,),
                     f"{p}.ATT_broad.weight": (c3, w, 1, 1), f"{p}.ATT_broad.bias": (c3,),
                     f"{p}.attn.in_proj_weight": (3 * e, e), f"{p}.attn.in_proj_bias": (3 * e,),
                     f"{p}.attn.out_proj.weight": (e, e), f"{p}.attn.out_proj.bias": (e,),
                     f"{p}.mlp.c_fc.weight": (4 * e, e), f"{p}.mlp.c_fc.bias": (4 * e,),
                     f"{p}.mlp.c_proj.weight": (e, 4 * e), f"{p}.mlp.c_proj.bias": (e,),
                     f"{p}.ATT_narrow1.weight": (w, cl, 6, 6), f"{p}.ATT_narrow1.bias": (w,),
                     f"{p}.ATT_narrow2.weight": (w, cl, 4, 4), f"{p}.ATT_narrow2.bias": (w,)})
        keys.update({f"{p}.{ln}.{t}": (e,) for ln in ("ln_1", "ln_2", "ln_1o")
                     for t in ("weight", "bias")})
    keys["local_conv.weight"] = (128, 64, 1, 1)
    keys.update(bn("feat_bn2d", 128))
    return keys


def mscmnet_keys(classes: int, size: tuple[int, int] = (24, 12)) -> dict[str, tuple[int, ...]]:
    """MSCMNet's embed_net for a ``size`` layer3 map (published 24 x 12): five ResNet-50s,
    NL blocks of inner width C/2, four layerATT blocks, the dead modules, the head."""
    keys = {**resnet50("base_resnet.base"), **mscmnet_parts((64, 256, 512, 1024), size)}
    for name, c in (("NL_2.0", 512), ("NL_2.1", 512), ("NL_3.0", 1024), ("NL_3.1", 1024),
                    ("NL_3.2", 1024)):
        keys.update(non_local(name, c, c // 2))
    return {**keys, **bn("bottleneck", 2048), "classifier.weight": (classes, 2048)}
