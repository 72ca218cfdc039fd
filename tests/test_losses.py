"""Losses on hand-built cases: triplet, WRT, label smoothing, modality heads, KL, center."""
import math

import pytest
import torch
import torch.nn.functional as F

from layers import LOSS_TERMS, CenterLoss, batch_hard_triplet, build_criterion, mining_masks
from modeling.methods.agw import weighted_regularized_triplet
from utils.config import get_default_config, load_config
from utils.distances import pairwise_distance
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


class Terms:
    """A criterion returning only its dict of weighted terms (the total is checked once,
    in test_criterion_terms_names_and_weights)."""

    def __init__(self, criterion) -> None:
        self.criterion, self.terms = criterion, criterion.terms

    def __call__(self, *args):
        return self.criterion(*args)[1]


def criterion_for(*overrides: str, num_classes: int = 4, feat_dim: int = 2):
    return Terms(build_criterion(load_config(None, list(overrides)), num_classes, feat_dim))


def outputs(feat: torch.Tensor, num_classes: int = 4) -> dict:
    return {"feat": feat, "bn_feat": feat, "logits": torch.zeros(len(feat), num_classes)}


def triplet_of(feat, pid, modality=None, margin=0.3, mining="all", distance="euclidean"):
    modality = torch.zeros_like(pid) if modality is None else modality
    pos, neg = mining_masks(pid, modality, mining)
    return batch_hard_triplet(pairwise_distance(feat, metric=distance), pos, neg, margin)


def test_distances():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 2.0]])
    d = pairwise_distance(x)
    assert torch.allclose(d, torch.cdist(x, x), atol=1e-5)
    c = pairwise_distance(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]), metric="cosine")
    assert torch.allclose(c, torch.tensor([[0.0, 1, 2], [1, 0, 1], [2, 1, 0]]), atol=1e-6)


def test_triplet_zero_when_classes_are_separated_beyond_the_margin():
    feat = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]])
    pid = torch.tensor([0, 0, 1, 1])
    assert triplet_of(feat, pid, margin=0.3).item() == 0.0


def test_triplet_hand_computed_value():
    # 1-D points: class 0 at 0 and 1, class 1 at 1.5 and 3; margin 1.
    # anchors: 0 -> relu(1 - 1.5 + 1) = 0.5; 1 -> relu(1 - 0.5 + 1) = 1.5;
    # 1.5 -> relu(1.5 - 0.5 + 1) = 2; 3 -> relu(1.5 - 2 + 1) = 0.5; mean 1.125
    feat = torch.tensor([[0.0], [1.0], [1.5], [3.0]])
    loss = triplet_of(feat, torch.tensor([0, 0, 1, 1]), margin=1.0)
    assert loss.item() == pytest.approx(1.125, abs=1e-5)
    crit = criterion_for("LOSS.TERMS", "triplet", "LOSS.MARGIN", "1", "LOSS.TRIPLET_WEIGHT", "2",
                         feat_dim=1)
    assert crit(outputs(feat), torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.long))[
        "loss_tri"].item() == pytest.approx(2.25, abs=1e-5)


def test_no_nan_gradient_at_zero_distance():
    feat = torch.ones(4, 3, requires_grad=True)  # every distance is 0
    pid = torch.tensor([0, 0, 1, 1])
    loss = triplet_of(feat, pid, margin=0.3)
    assert loss.item() == pytest.approx(0.3, abs=1e-5)
    loss.backward()
    assert torch.isfinite(feat.grad).all()
    for distance in ("euclidean", "cosine"):
        feat.grad = None
        pos, neg = mining_masks(pid, torch.zeros_like(pid))
        weighted_regularized_triplet(pairwise_distance(feat, metric=distance), pos, neg).backward()
        assert torch.isfinite(feat.grad).all()


def wrt_reference(feat, pid, modality, mining):
    """Direct per-anchor loop of the weighted regularized triplet."""
    d = torch.cdist(feat.double(), feat.double())
    losses = []
    for a in range(len(pid)):
        ok = [j for j in range(len(pid)) if mining == "all" or modality[j] != modality[a]]
        p = [j for j in ok if pid[j] == pid[a]]
        n = [j for j in ok if pid[j] != pid[a]]
        if not p or not n:
            continue
        dp, dn = d[a, p], d[a, n]
        far = (dp * torch.softmax(dp, 0)).sum()
        close = (dn * torch.softmax(-dn, 0)).sum()
        losses.append(math.log1p(math.exp(far - close)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("mining", ["all", "cross"])
def test_wrt_matches_reference_and_survives_duplicates(mining):
    torch.manual_seed(0)
    feat = torch.randn(8, 5)
    feat[1] = feat[0]  # duplicate images
    feat[5] = feat[4]
    feat.requires_grad_(True)
    pid = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    modality = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    pos, neg = mining_masks(pid, modality, mining)
    loss = weighted_regularized_triplet(pairwise_distance(feat), pos, neg)
    assert loss.item() == pytest.approx(wrt_reference(feat.detach(), pid, modality, mining),
                                        abs=1e-4)
    loss.backward()
    assert torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0


def test_cross_mining_uses_only_other_modality_pairs():
    pid = torch.tensor([0, 0, 0, 1, 1, 1])
    modality = torch.tensor([0, 0, 1, 0, 1, 1])
    pos, neg = mining_masks(pid, modality, "cross")
    assert not (pos & (modality[:, None] == modality[None, :])).any()
    assert not (neg & (modality[:, None] == modality[None, :])).any()
    assert pos[0].tolist() == [False, False, True, False, False, False]
    assert neg[0].tolist() == [False, False, False, False, True, True]
    # 1-D: anchor 0 (visible, id 0) at 0. Same-modality positive far (10), cross
    # positive at 1; same-modality negative near (0.5), cross negatives at 3 and 4.
    feat = torch.tensor([[0.0], [10.0], [1.0], [0.5], [3.0], [4.0]])
    dist = pairwise_distance(feat)
    loss_cross = batch_hard_triplet(dist[:1], pos[:1], neg[:1], margin=0.0)
    assert loss_cross.item() == 0.0  # 1 - 3 < 0: only cross pairs were used
    pos_all, neg_all = mining_masks(pid, modality, "all")
    assert batch_hard_triplet(dist[:1], pos_all[:1], neg_all[:1], 0.0).item() == pytest.approx(9.5)


def test_anchors_without_pairs_are_skipped():
    feat = torch.randn(4, 3, requires_grad=True)
    one_id = torch.zeros(4, dtype=torch.long)
    loss = triplet_of(feat, one_id)
    assert loss.item() == 0.0
    loss.backward()  # still attached to the graph
    same_modality = triplet_of(feat.detach(), torch.tensor([0, 0, 1, 1]), mining="cross")
    assert same_modality.item() == 0.0


def test_label_smoothing_formula():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    pid = torch.tensor([0, 3, 1, 1, 2])
    eps = 0.1
    log_p = F.log_softmax(logits, dim=1)
    target = torch.full((5, 4), eps / 4)
    target[torch.arange(5), pid] += 1 - eps
    expected = -(target * log_p).sum(1).mean()
    crit = criterion_for("LOSS.TERMS", "id", "LOSS.LABEL_SMOOTH", str(eps), "LOSS.ID_WEIGHT",
                         "0.5")
    out = crit({"logits": logits}, pid, torch.zeros(5, dtype=torch.long))
    assert set(out) == {"loss_id"}
    assert out["loss_id"].item() == pytest.approx(0.5 * expected.item(), abs=1e-6)
    plain = criterion_for("LOSS.TERMS", "id")({"logits": logits}, pid, torch.zeros_like(pid))
    assert plain["loss_id"].item() == pytest.approx(F.cross_entropy(logits, pid).item())


def head_outputs(visible_head, infrared_head):
    return {"head_logits": torch.stack([visible_head, infrared_head])}


def test_modality_id_uses_each_head_on_its_own_images_by_modality_tensor():
    torch.manual_seed(0)
    vis, ir = torch.randn(6, 4), torch.randn(6, 4)
    pid = torch.tensor([0, 1, 2, 3, 0, 1])
    modality = torch.tensor([1, 0, 0, 1, 1, 0])
    crit = criterion_for("LOSS.TERMS", "modality_id")
    got = crit(head_outputs(vis, ir), pid, modality)["loss_modality_id"]
    v, i = modality == 0, modality == 1
    expected = F.cross_entropy(vis[v], pid[v]) + F.cross_entropy(ir[i], pid[i])
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    perm = torch.tensor([5, 2, 0, 4, 1, 3])  # batch order does not matter
    again = crit(head_outputs(vis[perm], ir[perm]), pid[perm], modality[perm])
    assert again["loss_modality_id"].item() == pytest.approx(got.item(), abs=1e-6)
    only_visible = crit(head_outputs(vis, ir), pid, torch.zeros(6, dtype=torch.long))
    assert only_visible["loss_modality_id"].item() == pytest.approx(
        F.cross_entropy(vis, pid).item(), abs=1e-6)


def test_kl_zero_when_heads_agree_and_only_the_own_head_learns():
    torch.manual_seed(0)
    crit = criterion_for("LOSS.TERMS", "kl", "LOSS.KL_WEIGHT", "2")
    pid = torch.tensor([0, 1, 2, 3])
    modality = torch.tensor([0, 1, 0, 1])
    same = torch.randn(4, 4)
    assert crit(head_outputs(same, same.clone()), pid, modality)["loss_kl"].abs().item() < 1e-6

    logits = torch.randn(2, 4, 4, requires_grad=True)
    loss = crit({"head_logits": logits}, pid, modality)["loss_kl"]
    p_vis, p_ir = F.softmax(logits[0], 1).detach(), F.softmax(logits[1], 1).detach()
    kl = (p_ir * (p_ir.log() - p_vis.log())).sum(1)  # KL(infrared || visible) per image
    kl_rev = (p_vis * (p_vis.log() - p_ir.log())).sum(1)
    expected = 2 * (kl[modality == 0].mean() + kl_rev[modality == 1].mean())
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    loss.backward()
    # visible images train the visible head only, infrared images the infrared head only
    assert logits.grad[1][modality == 0].abs().sum() == 0
    assert logits.grad[0][modality == 1].abs().sum() == 0
    assert logits.grad[0][modality == 0].abs().sum() > 0


def test_center_loss_value_and_update_rule():
    center = CenterLoss(num_classes=3, feat_dim=2, alpha=0.5)
    with torch.no_grad():
        center.centers.zero_()
    feat = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0]], requires_grad=True)
    pid = torch.tensor([0, 0, 2])
    loss = center(feat, pid)
    assert loss.item() == pytest.approx((4 + 16 + 1) / 3)
    loss.backward()
    assert torch.isfinite(feat.grad).all()
    # c0 -= 0.5 * ((0 - 2) + (0 - 4)) / (1 + 2) = +1;  c2 -= 0.5 * (0 - 1) / 2 along y
    assert torch.allclose(center.centers, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.25]]))
    assert "centers" in center.state_dict() and not list(center.parameters())
    center.eval()
    center(feat, pid)
    assert center.centers[0, 0].item() == 1.0  # no update outside training


def test_criterion_terms_names_and_weights():
    crit = criterion_for("LOSS.TERMS", "id, triplet, wrt, center, modality_id, kl",
                         "LOSS.METRIC_FEAT", "bn", feat_dim=3)
    torch.manual_seed(0)
    out = {"feat": torch.randn(4, 3), "bn_feat": torch.randn(4, 3),
           "logits": torch.randn(4, 4), "head_logits": torch.randn(2, 4, 4)}
    total, losses = crit.criterion(out, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
    assert set(losses) == {"loss_id", "loss_tri", "loss_wrt", "loss_center",
                           "loss_modality_id", "loss_kl"}
    assert total.item() == pytest.approx(sum(v.item() for v in losses.values()), rel=1e-6)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert crit.terms["loss_tri"].feat_key == "bn_feat"
    with pytest.raises(ValueError, match="head_logits"):
        criterion_for("LOSS.TERMS", "kl")(outputs(torch.randn(4, 2)), torch.tensor([0, 0, 1, 1]),
                                          torch.tensor([0, 1, 0, 1]))


def test_unknown_loss_name_lists_the_valid_ones():
    cfg = get_default_config()
    cfg.LOSS.TERMS = ("id", "focal")  # bypasses the config's check: the registry refuses it
    with pytest.raises(UserError) as err:
        build_criterion(cfg, 4, 2)
    assert "'focal'" in str(err.value)
    assert all(name in str(err.value) for name in LOSS_TERMS)
