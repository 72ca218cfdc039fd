"""DEEN losses (CPM, orthogonality) and the published ADP / WRT triplets on hand-built cases."""
import math

import pytest
import torch

from layers.metric import mining_masks
from modeling.methods.agw import (
    weighted_regularized_triplet,
    weighted_regularized_triplet_published,
)
from modeling.methods.caj import adaptive_triplet_adp
from modeling.methods.deen.losses import center_guided_pair_mining, orthogonality_loss
from utils.distances import pairwise_distance

pytestmark = pytest.mark.usefixtures("one_thread")

# 2 ids x (2 visible + 2 infrared), D = 2; rows: id0 V V I I, id1 V V I I.
PID = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
MODALITY = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])


def hand_batch():
    # centres: c_V0 (1,0) c_I0 (1,3) e_V0 (1,1) e_I0 (1,2);
    #          c_V1 (3,0) c_I1 (3,4) e_V1 (3,1) e_I1 (3,2)
    feat = torch.tensor([[0.0, 0], [2, 0], [1, 2], [1, 4], [2, 0], [4, 0], [3, 3], [3, 5]])
    feat_exp = torch.tensor([[0.0, 1], [2, 1], [1, 1], [1, 3], [3, 0], [3, 2], [2, 2], [4, 2]])
    return feat, feat_exp


def test_cpm_hand_computed_value():
    # L_V, id0: d(c_I,e_V)=2, d(c_V,e_V)=1 -> 1.2; nearest e_V 2 -> 0.2; nearest c_V 2 -> 0.2
    #      id1: 3, 1 -> 2.2; 3 - 2 -> 1.2; 3 - 2 -> 1.2
    #   L_V = (1.2+2.2)/2 + (0.2+1.2)/4 + (0.2+1.2)/4 = 2.4
    # L_I, id0: d(c_V,e_I)=2, d(c_I,e_I)=1 -> 1.2; nearest e_I 2 -> 0.2; nearest c_I sqrt5 -> 0
    #      id1: 2, 2 -> 0.2; 2 -> 0.2; sqrt5 -> 0
    #   L_I = (1.2+0.2)/2 + (0.2+0.2)/4 + 0 = 0.8;  CPM = (2.4 + 0.8) / 2 = 1.6
    feat, feat_exp = hand_batch()
    loss = center_guided_pair_mining(feat, feat_exp, PID, MODALITY, margin=0.2)
    assert loss.item() == pytest.approx(1.6, abs=1e-5)
    assert center_guided_pair_mining(feat, feat_exp, PID, MODALITY, detach_own=False).item() == \
        pytest.approx(1.6, abs=1e-5)


def cpm_reference(feat, feat_exp, pid, modality, margin):
    """Per-identity loops over explicitly collected centres."""
    ids = [i for i in sorted(set(pid.tolist()))
           if {0, 1} <= {m for p, m in zip(pid.tolist(), modality.tolist()) if p == i}]

    def centre(x, i, m):
        return torch.stack([x[b] for b in range(len(x)) if pid[b] == i and modality[b] == m]
                           ).double().mean(0)

    def one_side(own_m, other_m):
        hinge = [[], [], []]
        for i in ids:
            a = (centre(feat, i, other_m) - centre(feat_exp, i, own_m)).norm()
            own = (centre(feat, i, own_m) - centre(feat_exp, i, own_m)).norm()
            near_e = min((centre(feat_exp, i, own_m) - centre(feat_exp, j, own_m)).norm()
                         for j in ids if j != i)
            near_c = min((centre(feat, i, own_m) - centre(feat, j, own_m)).norm()
                         for j in ids if j != i)
            for k, neg in enumerate((own, near_e, near_c)):
                hinge[k].append(max(0.0, float(a - neg + margin)))
        means = [sum(h) / len(h) for h in hinge]
        return means[0] + 0.5 * means[1] + 0.5 * means[2]

    return (one_side(0, 1) + one_side(1, 0)) / 2


def random_batch(seed=0):
    # 3 ids with both modalities (unequal counts) and one visible-only id (7)
    g = torch.Generator().manual_seed(seed)
    pid = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 7, 7])
    modality = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0])
    feat = torch.randn(len(pid), 3, generator=g) * 0.4
    feat_exp = feat + torch.randn(len(pid), 3, generator=g) * 0.3
    return feat, feat_exp, pid, modality


def test_cpm_matches_loop_reference_and_ignores_batch_order_and_single_modality_ids():
    feat, feat_exp, pid, modality = random_batch()
    loss = center_guided_pair_mining(feat, feat_exp, pid, modality, margin=0.5)
    assert loss.item() > 0
    assert loss.item() == pytest.approx(cpm_reference(feat, feat_exp, pid, modality, 0.5),
                                        abs=1e-5)
    perm = torch.randperm(len(pid), generator=torch.Generator().manual_seed(1))
    shuffled = center_guided_pair_mining(feat[perm], feat_exp[perm], pid[perm], modality[perm],
                                         margin=0.5)
    assert shuffled.item() == pytest.approx(loss.item(), abs=1e-6)
    keep = pid != 7
    without = center_guided_pair_mining(feat[keep], feat_exp[keep], pid[keep], modality[keep],
                                        margin=0.5)
    assert without.item() == pytest.approx(loss.item(), abs=1e-6)


def test_cpm_needs_two_identities_with_both_modalities():
    feat, feat_exp, pid, modality = random_batch()
    keep = (pid == 0) | (pid == 7)
    f = feat[keep].clone().requires_grad_(True)
    loss = center_guided_pair_mining(f, feat_exp[keep], pid[keep], modality[keep])
    assert loss.item() == 0.0
    loss.backward()  # attached to the graph
    assert torch.equal(f.grad, torch.zeros_like(f))


def only_own_term_active():
    # Per identity: c_V (0,0), e_V (0,0.1), c_I (1,0), e_I (0,-0.1); id1 shifted by (4,4).
    # Only L_V's first hinge is active: d(c_I,e_V) - d(c_V,e_V) + 0.2 = 1.105 > 0, while
    # d(c_V,e_I) - d(c_I,e_I) + 0.2 < 0 and every other identity is more than 5 away.
    base = torch.tensor([[-0.1, 0.0], [0.1, 0], [1, 0.1], [1, -0.1]])
    base_exp = torch.tensor([[-0.1, 0.1], [0.1, 0.1], [-0.1, -0.1], [0.1, -0.1]])
    shift = torch.tensor([4.0, 4.0])
    return torch.cat([base, base + shift]), torch.cat([base_exp, base_exp + shift])


@pytest.mark.parametrize("detach_own", [True, False])
def test_cpm_gradient_of_the_own_modality_term(detach_own):
    feat, feat_exp = (t.clone().requires_grad_(True) for t in only_own_term_active())
    loss = center_guided_pair_mining(feat, feat_exp, PID, MODALITY, detach_own=detach_own)
    # float32 |a|^2 + |b|^2 - 2ab: about 1e-5 off at d = 0.1 for points 5 from the origin
    assert loss.item() == pytest.approx(0.5 * (math.hypot(1.0, 0.1) - 0.1 + 0.2), abs=1e-4)
    loss.backward()
    vis, ir = MODALITY == 0, MODALITY == 1
    # d(c_I, e_V) always trains the infrared originals and the visible expansions
    assert feat.grad[ir].abs().sum() > 0 and feat_exp.grad[vis].abs().sum() > 0
    assert torch.equal(feat_exp.grad[ir], torch.zeros(4, 2))  # every L_I hinge is inactive
    own = feat.grad[vis].abs().sum().item()
    assert (own == 0.0) if detach_own else (own > 0.0)


def test_orthogonality_is_sum_of_inner_products_over_all_embeddings():
    p1 = torch.tensor([[1.0, 2.0], [0.0, 3.0]], requires_grad=True)
    p2 = torch.tensor([[3.0, 1.0], [2.0, 2.0]])
    loss = orthogonality_loss(p1, p2)
    assert loss.item() == pytest.approx((5.0 + 6.0) / 6.0)  # 3 views x 2 images
    assert orthogonality_loss(p1, p2, views=2).item() == pytest.approx(11.0 / 4.0)
    loss.backward()
    assert torch.allclose(p1.grad, p2 / 6.0)
    with pytest.raises(ValueError, match="orthogonality"):
        orthogonality_loss(p1, p2[:1])


def adp_reference(x, pid, alpha, gamma, square):
    """Per-anchor loop with Python floats, including the published +1e-6 and shift rules."""
    total = 0.0
    for a in range(len(x)):
        d = [abs(x[a] - x[j]) for j in range(len(x))]
        pos = [d[j] for j in range(len(x)) if pid[j] == pid[a]]
        neg = [d[j] for j in range(len(x)) if pid[j] != pid[a]]
        top = max(alpha * v for v in pos)  # positives are shifted by their max ...
        wp = [math.exp(alpha * v - top) for v in pos]
        far = sum(v * w for v, w in zip(pos, wp)) / (sum(wp) + 1e-6)
        wn = [math.exp(-alpha * v) for v in neg]  # ... negatives are not shifted
        close = sum(v * w for v, w in zip(neg, wn)) / (sum(wn) + 1e-6)
        if square:
            z = min(gamma * (far - close) ** 2, 88.0)
            y = -1.0 if far > close else 1.0
            total += math.log1p(math.exp(-y * z))
        else:
            total += math.log1p(math.exp(-gamma * (close - far)))
    return total / len(x)


@pytest.mark.parametrize("alpha, gamma, square", [(1.0, 1.0, True), (2.0, 0.5, True),
                                                  (1.0, 1.0, False), (0.5, 2.0, False)])
def test_adp_matches_loop_reference(alpha, gamma, square):
    x = [0.0, 1.0, 1.5, 4.0]
    pid = torch.tensor([0, 0, 1, 1])
    pos, neg = mining_masks(pid, torch.zeros_like(pid))
    dist = pairwise_distance(torch.tensor(x)[:, None])
    loss = adaptive_triplet_adp(dist, pos, neg, alpha, gamma, square)
    assert loss.item() == pytest.approx(adp_reference(x, pid, alpha, gamma, square), abs=1e-5)


def test_adp_hand_computed_anchor():
    # 1-D: id0 at 0 and 1, id1 at 1.5 and 4; anchor 0, alpha = gamma = 1, square:
    # far = 1 / (1 + e^-1 + 1e-6) = 0.731058
    # close = (1.5 e^-1.5 + 4 e^-4) / (e^-1.5 + e^-4 + 1e-6) = 1.689638
    # far < close, so y = +1: log(1 + exp(-(0.731058 - 1.689638)^2)) = log(1 + e^-0.918876)
    pid = torch.tensor([0, 0, 1, 1])
    pos, neg = mining_masks(pid, torch.zeros_like(pid))
    dist = pairwise_distance(torch.tensor([[0.0], [1.0], [1.5], [4.0]]))
    loss = adaptive_triplet_adp(dist[:1], pos[:1], neg[:1])
    assert loss.item() == pytest.approx(0.335734, abs=1e-5)


def test_adp_square_clamps_at_88():
    # anchor 0: far positive ~20, close negative ~0.5, (19.5)^2 > 88 -> log(1 + e^88) ~ 88
    x = [0.0, 20.0, 0.5, 40.0]
    feat = torch.tensor(x)[:, None].requires_grad_(True)
    pid = torch.tensor([0, 0, 1, 2])
    pos, neg = mining_masks(pid, torch.zeros_like(pid))
    dist = pairwise_distance(feat)
    assert adaptive_triplet_adp(dist[:1], pos[:1], neg[:1]).item() == pytest.approx(88.0, abs=1e-4)
    loss = adaptive_triplet_adp(dist, pos, neg)
    assert loss.item() == pytest.approx(adp_reference(x, pid, 1.0, 1.0, True), abs=1e-4)
    loss.backward()
    assert torch.isfinite(feat.grad).all()


def wrt_pair(x, pid, modality):
    pos, neg = mining_masks(pid, modality)
    out = []
    for fn in (weighted_regularized_triplet_published, weighted_regularized_triplet):
        xx = x.clone().requires_grad_(True)
        loss = fn(pairwise_distance(xx), pos, neg)
        loss.backward()
        out.append((loss.detach(), xx.grad))
    return out


@pytest.mark.parametrize("normalise, spread, loss_tol, grad_tol", [
    (True, 1.0, 1e-6, 1e-6), (False, 0.01, 1e-6, 1e-6), (False, 0.05, 1e-6, 1e-6),
    (False, 0.2, 5e-5, 2e-6)])
def test_published_wrt_agrees_with_exact_wrt_at_small_distances(normalise, spread, loss_tol,
                                                                grad_tol):
    # negatives 0.27-0.30, 1.3-1.5 and 5.3-6.0 apart for spreads 0.01, 0.05, 0.2;
    # 1.36-1.50 once normalised
    g = torch.Generator().manual_seed(0)
    pid = torch.arange(3).repeat_interleave(4)
    modality = torch.tensor([0, 0, 1, 1] * 3)
    x = (torch.randn(3, 256, generator=g).repeat_interleave(4, 0)
         + 0.7 * torch.randn(12, 256, generator=g)) * spread
    if normalise:
        x = torch.nn.functional.normalize(x, dim=1)
    (published, grad_p), (exact, grad_e) = wrt_pair(x, pid, modality)
    assert published.item() == pytest.approx(exact.item(), abs=loss_tol)
    assert torch.allclose(grad_p, grad_e, rtol=0.0, atol=grad_tol)


def test_published_wrt_loses_far_negatives_and_stays_finite():
    pid = torch.tensor([0, 0, 1, 1])
    modality = torch.tensor([0, 1, 0, 1])
    # negatives 30 apart: exp(-30) << 1e-6, so the soft-min negative shrinks to ~0
    x = torch.tensor([[0.0], [1.0], [30.0], [31.0]])
    (published, _), (exact, _) = wrt_pair(x, pid, modality)
    close_neg = 30 * math.exp(-30) / (math.exp(-30) + math.exp(-31) + 1e-6)
    assert close_neg < 1e-5
    far_pos = 1 / (1 + math.exp(-1) + 1e-6)
    assert published.item() == pytest.approx(math.log1p(math.exp(far_pos - close_neg)), abs=1e-5)
    assert exact.item() < 1e-6
    # a positive pair 100 apart with far negatives: the published log(1 + e^100) is inf
    # in float32; its softplus form gives the true value, p - n ~ 99.7, and gradients
    x = torch.tensor([[0.0], [100.0], [300.0], [400.0]])
    (published, grad_p), (exact, grad_e) = wrt_pair(x, pid, modality)
    assert math.isinf(math.log1p(torch.tensor(100.0).exp().item()))
    assert published.item() == pytest.approx(100 / (1 + math.exp(-100)), rel=1e-4)
    assert torch.isfinite(grad_p).all() and torch.isfinite(exact) and torch.isfinite(grad_e).all()
