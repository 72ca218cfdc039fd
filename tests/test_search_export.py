"""tools/search.py, tools/extract.py and tools/export.py on tiny random-weight networks."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.deploy as deploy
from data.transforms import EvalTransform, load_image
from engine.export import (
    ExportableNet,
    PlainAttention,
    example_batch,
    export_model,
    load_torchscript,
    run_exported,
)
from engine.inference import extract_features
from modeling import build_model
from tests.helpers import SMALL, run_script, save_random_checkpoint
from tools import export as export_tool
from tools import extract as extract_tool
from tools import search as search_tool
from utils.config import config_from_ini_text, load_config
from utils.distances import feature_distance
from utils.errors import UserError
from utils.io import atomic_torch_save

pytestmark = pytest.mark.usefixtures("one_thread")
TWO_STREAM = ("MODEL.SHARED_FROM", "1", "MODEL.POOLING", "gem")


@pytest.fixture(scope="module")
def ckpt(regdb_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-type checkpoint (stem per modality, GeM, BN feature) whose infrared stem
    differs from the visible one, so a routing mistake changes the features."""
    path = save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pth", "regdb",
                                  regdb_root, *TWO_STREAM)
    state = torch.load(path, weights_only=True)
    gen = torch.Generator().manual_seed(1)
    for k, v in state["model"].items():
        if k.startswith("infrared.") and v.is_floating_point() and "running" not in k:
            v.add_(0.3 * torch.randn(v.shape, generator=gen) * v.std())
    atomic_torch_save(state, path)
    return path


def direct_features(ckpt_path: Path, paths: list[str], modality: int) -> torch.Tensor:
    """The network called as in training code: model(img, modality), images loaded one by one."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    cfg = config_from_ini_text(ckpt["config"])
    model = build_model(cfg, int(ckpt["num_classes"]))
    model.load_state_dict(ckpt["model"])
    transform = EvalTransform(cfg)
    img = torch.stack([transform(load_image(p, tuple(cfg.DATA.SIZE_TEST), cfg.DATA.RESIZE))
                       for p in paths])
    with torch.inference_mode():
        return model.eval()(img, torch.full((len(paths),), modality, dtype=torch.long))


def plant_gallery(regdb_root: Path, folder: Path, query_pids: tuple[int, ...]) -> dict[int, Path]:
    """Every identity's images but the first from the visible camera, plus, for each
    query identity, a re-encoded, enlarged JPEG copy of its first image (the planted
    match) named so that it sorts in the middle of its identity's images."""
    planted = {}
    for person in sorted((regdb_root / "Visible").iterdir(), key=lambda p: int(p.name)):
        files = sorted(person.iterdir())
        (folder / person.name).mkdir(parents=True)
        for f in files[1:]:
            (folder / person.name / f.name).write_bytes(f.read_bytes())
        if int(person.name) in query_pids:
            copy = folder / person.name / (files[1].stem + "_x.jpg")
            with Image.open(files[0]) as im:
                im.resize((im.width * 2, im.height * 2)).save(copy, quality=85)
            planted[int(person.name)] = copy
    return planted


def test_search_ranks_the_planted_image_first_and_reuses_the_cache(
        ckpt, regdb_root, tmp_path, monkeypatch, capsys):
    pids = (3, 7, 12)
    planted = plant_gallery(regdb_root, tmp_path / "gallery", pids)
    queries = [str(sorted((regdb_root / "Visible" / str(p)).iterdir())[0]) for p in pids]
    out = tmp_path / "out"
    calls: list[int] = []
    real = deploy.extract_features

    def counted(model, loader, num_images, *args, **kwargs):
        calls.append(num_images)
        return real(model, loader, num_images, *args, **kwargs)

    monkeypatch.setattr(deploy, "extract_features", counted)
    code, stdout, err = run_script(search_tool, monkeypatch, capsys, "--model_path", str(ckpt),
                                   "--query", *queries, "--gallery", str(tmp_path / "gallery"),
                                   "--query-modality", "visible", "--gallery_modality",
                                   "visible", "--top", "5", "--out", str(out))
    assert code == 0, err
    gallery = sorted(str(p) for p in (tmp_path / "gallery").rglob("*") if p.is_file())
    assert calls == [len(gallery), len(queries)]
    ranking = json.loads((out / "ranking.json").read_text())
    assert [q["query"] for q in ranking["queries"]] == queries
    for pid, q in zip(pids, ranking["queries"]):
        top = q["top"]
        assert top[0]["path"] == str(planted[pid]), top
        assert [e["rank"] for e in top] == [1, 2, 3, 4, 5]
        assert [e["distance"] for e in top] == sorted(e["distance"] for e in top)
        assert f"  1  {top[0]['distance']:.4f}  {planted[pid]}" in stdout
        sheet = Image.open(out / q["sheet"])
        assert sheet.format == "PNG" and sheet.size == (6 + 6 * (64 + 6) + 6, 6 + 128 + 14 + 6)
    # The listed distances are the checkpoint's distance between the network's features.
    q_feat = direct_features(ckpt, queries, 0)
    g_feat = direct_features(ckpt, gallery, 0)
    dist = feature_distance(q_feat, g_feat, ranking["distance"], ranking["normalized"])
    first = ranking["queries"][0]["top"]
    np.testing.assert_allclose([e["distance"] for e in first],
                               [dist[0, gallery.index(e["path"])].item() for e in first],
                               atol=1e-4)
    assert "extracted and cached" in stdout

    # A second search against the same gallery: only the query is extracted.
    calls.clear()
    code, stdout, err = run_script(search_tool, monkeypatch, capsys, "--model-path", str(ckpt),
                                   "--query", queries[1], "--gallery",
                                   str(tmp_path / "gallery" / "*" / "*"),
                                   "--gallery-modality", "visible", "--out", str(out))
    assert code == 0, err
    assert calls == [1] and "read from the cache" in stdout
    again = json.loads((out / "ranking.json").read_text())["queries"][0]["top"]
    assert again[0]["path"] == str(planted[pids[1]])

    # A changed gallery file changes the key: extracted again. The output folder inside
    # the gallery folder: its sheets are not taken as gallery images.
    calls.clear()
    os.utime(gallery[0], ns=(1, 1))
    inside = tmp_path / "gallery" / "found"
    for _ in range(2):
        code, stdout, err = run_script(search_tool, monkeypatch, capsys, "--model_path",
                                       str(ckpt), "--query", queries[0], "--gallery",
                                       str(tmp_path / "gallery"), "--gallery-modality",
                                       "visible", "--out", str(inside))
        assert code == 0, err
    assert calls == [len(gallery), 1, 1] and "read from the cache" in stdout
    assert json.loads((inside / "ranking.json").read_text())["gallery_size"] == len(gallery)


def test_extract_writes_the_documented_npz(ckpt, regdb_root, tmp_path, monkeypatch, capsys):
    folder = regdb_root / "Thermal" / "5"
    out = tmp_path / "feats" / "ir.npz"
    code, stdout, err = run_script(extract_tool, monkeypatch, capsys, "--model-path", str(ckpt),
                                   "--images", str(folder), "--modality", "infrared",
                                   "--out", str(out))
    assert code == 0, err
    paths = sorted(str(p) for p in folder.iterdir())
    with np.load(out) as f:
        assert sorted(f.files) == ["checkpoint", "config", "infrared_cam", "infrared_feat",
                                   "infrared_path", "infrared_pid", "model_sha256"]
        assert f["infrared_path"].tolist() == paths
        assert f["infrared_pid"].tolist() == [-1] * len(paths)
        assert f["infrared_cam"].tolist() == [0] * len(paths)
        assert str(f["checkpoint"]) == str(ckpt)
        assert str(f["model_sha256"]) == hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert "[MODEL]" in str(f["config"])
        feat = f["infrared_feat"]
    assert f"{len(paths)} features of width 512 written to {out}" in stdout
    # The infrared stream's features, not the visible one's.
    np.testing.assert_allclose(feat, direct_features(ckpt, paths, 1).numpy(), atol=1e-5)
    assert not np.allclose(feat, direct_features(ckpt, paths, 0).numpy(), atol=1e-3)


NETWORKS = {
    "demo_synthetic": [*TWO_STREAM],
    "agw": [*TWO_STREAM, "MODEL.NON_LOCAL_BLOCKS", "0,2,2,0"],
    "deen": ["MODEL.SHARED_FROM", "1", "MODEL.DEE_BRANCHES", "2", "MODEL.DEE_AFTER", "2",
             "MODEL.MFA", "1,1,0,0", "TEST.FEAT", "pool+bn", "TEST.NORM_EACH", "yes",
             "TEST.FLIP", "yes"],
    # A method's front (four stems, a modality's two averaged at test) and the attention
    # chain that reads the earlier stages' maps; 64x32 gives layer3 a 4x2 map.
    "mscmnet": ["DATA.SIZE_TRAIN", "64,32", "DATA.SIZE_TEST", "64,32", *TWO_STREAM,
                "AGW.NON_LOCAL_BLOCKS", "0,2,1,0", "MSCMNET.FOUR_STEMS", "yes",
                "MSCMNET.ATTENTION", "yes", "MSCMNET.HEADS", "4", "TEST.FLIP", "yes"],
}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_export_matches_pytorch(name, fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    cfg = load_config(None, ["DATA.DATASET_NAME", "regdb", *SMALL, *NETWORKS[name]])
    torch.manual_seed(0)
    model = build_model(cfg, 4)
    with torch.no_grad():
        # Streams that differ, inserted blocks that are not the identity (their output BN
        # starts at zero) and BN statistics that are not the initial ones.
        for n, p in model.named_parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
            p.mul_(1 + 0.1 * torch.randn_like(p) * (2.0 if n.startswith("infrared.") else 1.0))
        for n, b in model.named_buffers():
            if n.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif n.endswith("running_mean"):
                b.normal_(0.0, 0.1)
    out = tmp_path / f"{name}.{fmt}"
    report = export_model(cfg, model, out, fmt)
    assert report.max_abs_diff <= 1e-4 and report.path == out and out.is_file()
    # Independently of the export's own check: another batch size and modality mix, against
    # the features test.py ranks with (TEST.FLIP: the sum with the mirror's feature).
    img, _ = example_batch(cfg, 5, seed=7)
    modality = torch.tensor([1, 1, 0, 1, 0])
    batches = [{"img": img[:2], "modality": modality[:2], "index": torch.arange(2)},
               {"img": img[2:], "modality": modality[2:], "index": torch.arange(2, 5)}]
    want = extract_features(model, batches, 5, torch.device("cpu"), flip=cfg.TEST.FLIP)
    if cfg.TEST.FLIP:
        with torch.inference_mode():
            plain = model.eval()(img, modality)
        assert not torch.allclose(want, plain, atol=1e-3)
    got = run_exported(out, fmt, img, modality)
    assert got.shape == tuple(want.shape)
    assert np.abs(got - want.numpy()).max() <= 1e-4
    assert report.feature_dim == want.shape[1]


def test_a_front_without_a_single_modality_path_is_refused_in_one_line():
    class Front(torch.nn.Module):
        def forward(self, img, modality, part=None):
            return img

    cfg = load_config(None, ["DATA.DATASET_NAME", "regdb", *SMALL, *TWO_STREAM])
    model = build_model(cfg, 4)
    model.front = Front()
    with pytest.raises(UserError, match=r"cannot export this network: its front \(Front\) "
                                        r"has no single\(img, modality\) path"):
        ExportableNet(model, flip=False)


def test_plain_attention_equals_the_module_and_refuses_what_it_does_not_compute():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q, v = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    with torch.no_grad():
        want = mha(q, q, v, need_weights=False)[0]
        got = PlainAttention(mha)(q, q, v, need_weights=False)[0]
    assert torch.allclose(got, want, atol=1e-6)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    with pytest.raises(UserError, match="called with attention weights or masks"):
        PlainAttention(mha)(q, q, v, attn_mask=mask)
    with pytest.raises(UserError, match="with bias_k/bias_v"):
        PlainAttention(torch.nn.MultiheadAttention(8, 2, add_bias_kv=True))


def test_onnx_of_a_single_stream_network_keeps_the_modality_input(tmp_path):
    onnx = pytest.importorskip("onnx")
    cfg = load_config(None, ["DATA.DATASET_NAME", "regdb", *SMALL, "MODEL.SHARED_FROM", "0"])
    report = export_model(cfg, build_model(cfg, 4), tmp_path / "m.onnx", "onnx")
    proto = onnx.load(str(report.path))
    assert [i.name for i in proto.graph.input] == ["images", "modality"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["image_size"]) == [32, 16] and meta["test_distance"] == "sqeuclidean"


def test_export_tool_writes_a_checked_file(ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.pt"
    code, stdout, err = run_script(export_tool, monkeypatch, capsys, "--model_path", str(ckpt),
                                   "--format", "torchscript", "--out", str(out))
    assert code == 0, err
    assert f"wrote {out} (torchscript" in stdout and "max abs difference" in stdout
    trained = deploy.load_trained(str(ckpt), "cpu")
    img, modality = example_batch(trained.cfg, 4, seed=3)
    module = load_torchscript(out)
    with torch.inference_mode():
        np.testing.assert_allclose(module(img, modality).numpy(),
                                   trained.model(img, modality).numpy(), atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# Bad input: one line, exit 2, nothing written.

def one_line_error(script, monkeypatch, capsys, *argv: str) -> str:
    code, _, err = run_script(script, monkeypatch, capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_search_bad_inputs(ckpt, regdb_root, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    q = str(sorted((regdb_root / "Visible" / "1").iterdir())[0])
    g = str(regdb_root / "Thermal" / "1")
    base = ["--model_path", str(ckpt), "--out", str(tmp_path / "out")]
    msg = one_line_error(search_tool, monkeypatch, capsys, *base, "--query", q,
                         "--gallery", str(empty))
    assert f"--gallery {empty}: no images" in msg
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    msg = one_line_error(search_tool, monkeypatch, capsys, *base, "--query", str(notes),
                         "--gallery", g)
    assert f"{notes} does not decode as an image" in msg
    broken = tmp_path / "bad" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8 cut short")
    msg = one_line_error(search_tool, monkeypatch, capsys, *base, "--query", q,
                         "--gallery", str(broken.parent))
    assert f"{broken} does not decode as an image" in msg
    msg = one_line_error(search_tool, monkeypatch, capsys, *base, "--query", q, "--gallery", g,
                         "--gallery-modality", "ultraviolet")
    assert "--gallery-modality = 'ultraviolet' is not a known modality" in msg
    assert "visible, infrared" in msg
    msg = one_line_error(search_tool, monkeypatch, capsys, *base, "--query", q,
                         "--gallery", str(tmp_path / "nowhere"))
    assert "nowhere: no such file, folder or pattern" in msg
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    msg = one_line_error(search_tool, monkeypatch, capsys, "--model_path", str(ckpt),
                         "--query", q, "--gallery", g, "--out", str(blocker / "out"))
    assert f"--out {blocker / 'out'}: cannot write there" in msg
    assert not (tmp_path / "out").exists()


def test_foreign_checkpoints_and_missing_onnx(regdb_root, tmp_path, monkeypatch, capsys):
    images = str(regdb_root / "Thermal" / "2")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    for path in (junk, foreign):
        for script, extra in ((extract_tool, ["--images", images, "--modality", "infrared",
                                              "--out", str(tmp_path / "f.npz")]),
                              (export_tool, ["--format", "torchscript",
                                             "--out", str(tmp_path / "m.pt")])):
            msg = one_line_error(script, monkeypatch, capsys, "--model_path", str(path), *extra)
            assert str(path) in msg
    assert "not a training checkpoint (missing model, config" in msg
    assert not list(tmp_path.glob("f.npz")) and not list(tmp_path.glob("m.pt"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when not installed
    msg = one_line_error(export_tool, monkeypatch, capsys, "--model_path", str(junk),
                         "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert msg == ("error: --format onnx needs the onnxruntime package, which is not "
                   "installed: pip install -r requirements-export.txt")


def test_extract_and_export_unwritable_output(ckpt, regdb_root, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    msg = one_line_error(extract_tool, monkeypatch, capsys, "--model_path", str(ckpt),
                         "--images", str(regdb_root / "Thermal" / "2"), "--modality", "infrared",
                         "--out", str(blocker / "f.npz"))
    assert f"--out {blocker}: cannot write there" in msg
    msg = one_line_error(export_tool, monkeypatch, capsys, "--model_path", str(ckpt),
                         "--format", "torchscript", "--out", str(blocker / "m.pt"))
    assert str(blocker / "m.pt") in msg and "cannot write" in msg
    msg = one_line_error(extract_tool, monkeypatch, capsys, "--model_path", str(ckpt),
                         "--images", str(regdb_root / "Thermal" / "2"), "--modality", "uv",
                         "--out", str(tmp_path / "f.npz"))
    assert "--modality = 'uv' is not a known modality" in msg


@pytest.mark.parametrize("script", [search_tool, extract_tool, export_tool])
def test_help_has_an_example(script, monkeypatch, capsys):
    code, out, _ = run_script(script, monkeypatch, capsys, "--help")
    assert code == 0
    assert "examples:" in out and "--model_path" in out and "--model-path" in out
