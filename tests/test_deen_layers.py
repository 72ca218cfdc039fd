"""DEEN modules: diverse embedding expansion (DEE) and multi-level feature aggregation (MFA)."""
import pytest
import torch
from torch import nn

from modeling.methods.deen.modules import (
    MFA,
    ChannelNonLocal,
    DiverseEmbeddingExpansion,
    SpatialNonLocal,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dee_shape_order_and_eval_mode():
    torch.manual_seed(0)
    dee = DiverseEmbeddingExpansion(16, branches=2, dropout=0.01).eval()
    x = torch.randn(3, 16, 6, 4)
    out = dee(x)
    assert dee.views == 3 and out.shape == (9, 16, 6, 4)
    assert torch.equal(out[:3], x)  # the original comes first, untouched in eval mode
    assert torch.equal(out[3:6], dee.branches[0](x))
    assert torch.equal(out[6:], dee.branches[1](x))
    assert not torch.allclose(out[3:6], out[6:])  # the two branches differ
    assert torch.equal(dee(x), out)  # no randomness at test time


def test_dee_branch_is_mean_of_dilated_convs_then_relu_and_projection():
    torch.manual_seed(0)
    dee = DiverseEmbeddingExpansion(8, branches=1).eval()
    branch = dee.branches[0]
    assert [c.dilation for c in branch.dilated] == [(1, 1), (2, 2), (3, 3)]
    assert [c.padding for c in branch.dilated] == [(1, 1), (2, 2), (3, 3)]
    assert all(c.bias is None and c.out_channels == 2 for c in branch.dilated)
    assert branch.project.bias is not None and branch.project.out_channels == 8
    x = torch.randn(2, 8, 5, 3)
    mixed = torch.zeros(2, 2, 5, 3)
    for conv, d in zip(branch.dilated, (1, 2, 3)):
        mixed += nn.functional.conv2d(x, conv.weight, padding=d, dilation=d)
    expected = nn.functional.conv2d(torch.relu(mixed / 3), branch.project.weight,
                                    branch.project.bias)
    assert torch.allclose(dee(x)[2:], expected, atol=1e-5)
    assert dee.views == 2 and dee(x).shape == (4, 8, 5, 3)


def test_dee_dropout_covers_the_original_in_training_only():
    torch.manual_seed(0)
    dee = DiverseEmbeddingExpansion(8, dropout=0.5).train()
    x = torch.rand(2, 8, 4, 4) + 1.0  # strictly positive, so zeros can only come from dropout
    out = dee(x)
    assert (out[:2] == 0).any()
    kept = out[:2] != 0
    assert torch.allclose(out[:2][kept], 2.0 * x[kept])  # inverted dropout scaling
    dee.eval()
    assert torch.equal(dee(x)[:2], x)


def test_dee_kaiming_normal_init():
    torch.manual_seed(0)
    branch = DiverseEmbeddingExpansion(64).branches[0]
    fan_in = 64 * 9
    for conv in branch.dilated:  # default PyTorch init would give std 0.577 / sqrt(fan_in)
        assert conv.weight.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.05)
    assert branch.project.weight.std().item() == pytest.approx((2.0 / 16) ** 0.5, rel=0.1)


def test_dee_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 4"):
        DiverseEmbeddingExpansion(6)
    with pytest.raises(ValueError, match="branch"):
        DiverseEmbeddingExpansion(8, branches=0)


@pytest.mark.parametrize("high, low, stride", [(256, 64, 1), (512, 256, 2), (1024, 512, 2)])
def test_mfa_shapes_and_identity_at_init(high, low, stride):
    torch.manual_seed(0)
    mfa = MFA(high, low, stride=stride)
    x_high = torch.randn(2, high, 4, 2)
    x_low = torch.randn(2, low, 4 * stride, 2 * stride)
    for training in (True, False):
        mfa.train(training)
        assert torch.equal(mfa(x_high, x_low), x_high)  # zero-initialised BN: residual only
    assert mfa.cnl.phi.stride == (stride, stride) and mfa.cnl.out[0].stride == (stride, stride)
    assert mfa.pnl.g.out_channels == low // 2 and mfa.pnl.out[0].in_channels == low // 2


def live(module: nn.Module) -> nn.Module:
    """Give every output BatchNorm a non-zero weight and bias; eval mode."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return module.eval()


def test_cnl_matches_explicit_channel_affinity():
    torch.manual_seed(0)
    high, low = 6, 4
    cnl = live(ChannelNonLocal(high, low, stride=2))
    x_high, x_low = torch.randn(1, high, 2, 3), torch.randn(1, low, 4, 6)
    theta = cnl.theta(x_high)[0].reshape(low, -1)
    phi = cnl.phi(x_low)[0].reshape(low, -1)
    g = cnl.g(x_low)[0].reshape(low, -1)
    y = torch.zeros(low, 24)
    for c in range(low):
        for k in range(low):
            y[c] += (theta[c] @ phi[k]) / low * g[k]
    expected = x_high + cnl.out(y.reshape(1, low, 4, 6))
    assert torch.allclose(cnl(x_high, x_low), expected, atol=1e-5)


def test_pnl_tokens_follow_the_published_reshape():
    # (low/2, h, w) maps are read as (low, h*w/2): token column n of row r holds
    # channel r // 2 at spatial position (r % 2) * h*w/2 + n.
    torch.manual_seed(0)
    high, low = 6, 4
    pnl = live(SpatialNonLocal(high, low))
    x_high, x_low = torch.randn(1, high, 2, 2), torch.randn(1, low, 4, 2)

    def tokens(conv_out):  # (1, low/2, h, w) -> (low, M)
        flat = conv_out[0].flatten(1)
        half = flat.shape[1] // 2
        return torch.stack([flat[r // 2, (r % 2) * half:(r % 2 + 1) * half] for r in range(low)])

    theta, phi, g = tokens(pnl.theta(x_high)), tokens(pnl.phi(x_low)), tokens(pnl.g(x_low))
    m_high, m_low = theta.shape[1], phi.shape[1]
    assert (m_high, m_low) == (2, 4)
    y = torch.zeros(low, m_high)
    for n in range(m_high):
        for k in range(m_low):
            y[:, n] += (theta[:, n] @ phi[:, k]) / m_low * g[:, k]
    expected = x_high + pnl.out(y.reshape(1, low // 2, 2, 2))
    assert torch.allclose(pnl(x_high, x_low), expected, atol=1e-5)


def test_mfa_is_cnl_then_pnl_and_softmax_option_changes_output():
    torch.manual_seed(0)
    mfa = live(MFA(8, 4, stride=2))
    x_high, x_low = torch.randn(2, 8, 2, 2), torch.randn(2, 4, 4, 4)
    out = mfa(x_high, x_low)
    assert torch.allclose(out, mfa.pnl(mfa.cnl(x_high, x_low), x_low))
    assert not torch.allclose(out, x_high)
    soft = MFA(8, 4, stride=2, softmax=True)
    soft.load_state_dict(mfa.state_dict())
    soft.eval()
    assert not torch.allclose(soft(x_high, x_low), out, atol=1e-4)
    assert torch.allclose(mfa(x_high[1:], x_low[1:]), out[1:], atol=1e-6)  # samples independent


@pytest.mark.parametrize("part_cls, high", [(ChannelNonLocal, 4), (SpatialNonLocal, 2)])
def test_softmax_affinity_rows_sum_to_one(part_cls, high):
    # With g constant (1.5) and the output projection removed, y = A g is 1.5
    # everywhere exactly when every affinity row sums to one.
    torch.manual_seed(0)
    part = part_cls(high, 4, softmax=True)
    part.out = nn.Identity()
    with torch.no_grad():
        part.g.weight.zero_()
        part.g.bias.fill_(1.5)
    x_high = torch.randn(2, high, 2, 4)
    y = part(x_high, torch.randn(2, 4, 2, 4)) - x_high
    assert torch.allclose(y, torch.full_like(y, 1.5), atol=1e-5)
    part.softmax = False
    assert not torch.allclose(part(x_high, torch.randn(2, 4, 2, 4)) - x_high, y, atol=1e-3)


def test_mfa_rejects_mismatched_sizes():
    mfa = MFA(8, 4, stride=2)
    with pytest.raises(ValueError, match="stride 2"):
        mfa(torch.randn(1, 8, 2, 2), torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="stride"):
        MFA(8, 4, stride=3)
    with pytest.raises(ValueError, match="tokens"):
        SpatialNonLocal(8, 4)(torch.randn(1, 8, 1, 1), torch.randn(1, 4, 1, 1))
