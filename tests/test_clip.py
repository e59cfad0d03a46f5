"""CLIP zero-shot scores (Eq. 4) and BCE-CL on a tiny, randomly initialised open_clip model; no downloads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="open_clip is not installed: pip install 'oesearch[clip]'")

from oesearch.models.clip import ClipDetector, clip_inputs, fine_tune_bce_cl, load_clip, prompts  # noqa: E402
from oesearch.training.objectives import BCE  # noqa: E402
from oesearch.training.trainer import anomaly_scores  # noqa: E402

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A registered tiny model config and a weights file for it, both written here."""
    folder = tmp_path_factory.mktemp("clip")
    (folder / "oesearch-tiny-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder / "oesearch-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("oesearch-tiny-clip")
    weights = folder / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return "oesearch-tiny-clip", weights


def test_load_clip_reads_the_local_file(tiny: tuple[str, Path]) -> None:
    name, weights = tiny
    model, tokenizer = load_clip(name, weights)
    saved = torch.load(weights)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert tokenizer(["a photo of a cat"]).shape == (1, 77)


def test_missing_weights_raise_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "ViT-B-32-openai.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_clip("ViT-B-32", missing)
    message = str(err.value)
    assert str(missing) in message and "'ViT-B-32'" in message and "downloads" in message
    assert "pretrained='openai'" in message and "torch.save" in message


def test_zero_shot_score_is_eq4_by_hand(tiny: tuple[str, Path]) -> None:
    name, weights = tiny
    model, tokenizer = load_clip(name, weights)
    model.eval()
    detector = ClipDetector(model, tokenizer, "bird")
    images = clip_inputs(np.random.default_rng(1).integers(0, 256, (5, 20, 20, 1)).astype(np.uint8), model)
    assert images.shape == (5, 3, 32, 32)
    scores = anomaly_scores(detector, BCE(), images)
    # By hand from the model's own features: cosine similarities, x100, softmax, the second prompt's share.
    with torch.no_grad():
        u = model.encode_image(images).double().numpy()
        v = model.encode_text(tokenizer(["a photo of a bird", "a photo of something"])).double().numpy()
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    e = np.exp(100 * (u @ v.T))
    np.testing.assert_allclose(scores, e[:, 1] / e.sum(1), rtol=1e-4, atol=1e-6)
    assert prompts("bird") == ["a photo of a bird", "a photo of something"]


def test_bce_cl_loss_is_cross_entropy_of_eq4(tiny: tuple[str, Path]) -> None:
    name, weights = tiny
    model, tokenizer = load_clip(name, weights)
    detector = ClipDetector(model, tokenizer, "bird").eval()
    x = clip_inputs(np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8), model)
    is_outlier = torch.tensor([False, False, True, True])
    with torch.no_grad():
        loss = BCE().loss(detector(x).double(), is_outlier).numpy()
        p = torch.softmax(detector.similarities(x).double(), dim=1).numpy()  # [p(v1), p(v2)]
    # Normal: -log p(v1); OE: -log p(v2) (the paper's code: -log_softmax at the true prompt).
    np.testing.assert_allclose(loss, [-math.log(p[0, 0]), -math.log(p[1, 0]), -math.log(p[2, 1]),
                                      -math.log(p[3, 1])], rtol=1e-6)


def test_fine_tuning_moves_the_image_encoder_only(tiny: tuple[str, Path]) -> None:
    name, weights = tiny
    model, tokenizer = load_clip(name, weights)
    detector = ClipDetector(model, tokenizer, "bird")
    text_before = detector.text.clone()
    text_tower = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("visual.")}
    rng = np.random.default_rng(3)
    normal = clip_inputs(rng.integers(0, 120, (16, 32, 32, 3)).astype(np.uint8), model)
    oe = clip_inputs(rng.integers(130, 256, (2, 32, 32, 3)).astype(np.uint8), model)
    losses = fine_tune_bce_cl(detector, normal, oe, seed=0, epochs=3, lr=1e-2, milestones=(2,), batch_size=8)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert torch.equal(detector.text, text_before)
    for key, value in model.state_dict().items():
        if key in text_tower:
            assert torch.equal(value, text_tower[key]), key
    again = ClipDetector(*load_clip(name, weights), "bird")
    assert fine_tune_bce_cl(again, normal, oe, seed=0, epochs=3, lr=1e-2, milestones=(2,), batch_size=8) == losses
