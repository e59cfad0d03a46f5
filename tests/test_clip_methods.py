"""train.method clip_zero_shot and bce_cl through the worker and the one trainer, on a tiny random open_clip model.

Every AUC is checked against one computed independently with ClipDetector,
clip_inputs and fine_tune_bce_cl on the same images and seed.  Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

open_clip = pytest.importorskip("open_clip", reason="open_clip is not installed: pip install 'oesearch[clip]'")

from oesearch.config import ConfigError, config_from_dict  # noqa: E402
from oesearch.data.embedded import load_digits_split, load_natural_patches  # noqa: E402
from oesearch.data.splits import OneVsRest, leave_one_class_out, one_vs_rest  # noqa: E402
from oesearch.models.clip import ClipDetector, clip_inputs, fine_tune_bce_cl, load_clip  # noqa: E402
from oesearch.search.fitness import Job  # noqa: E402
from oesearch.experiments.search import prepare  # noqa: E402
from oesearch.distributed.fitness_worker import _FitnessWorker  # noqa: E402
from oesearch.training.settings import WorkerSpec, worker_spec  # noqa: E402
from oesearch.training import TrainSettings, make_objective, train_and_evaluate  # noqa: E402
from oesearch.training import clip as clip_methods  # noqa: E402
from oesearch.training.clip import ClipSpec, cached_clip  # noqa: E402
from oesearch.training.objectives import packable  # noqa: E402

NAME = "oesearch-tiny-clip-methods"
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SCHEDULE = dict(epochs=2, lr=1e-2, milestones=(1,), batch_size=8, momentum=0.9)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registered tiny open_clip config and a weights file for it."""
    folder = tmp_path_factory.mktemp("clip-methods")
    (folder / f"{NAME}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder / f"{NAME}.json")
    torch.manual_seed(0)
    path = folder / "tiny.pt"
    torch.save(open_clip.create_model(NAME).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def task() -> OneVsRest:
    """Digit 8 normal, a small test set: 24 training images, 40 test images (8 normal)."""
    full = one_vs_rest(load_digits_split("train"), load_digits_split("test"), 8)
    rng = np.random.default_rng(0)
    normal_test = rng.choice(np.flatnonzero(~full.test_anomalous), 8, replace=False)
    anomalous_test = rng.choice(np.flatnonzero(full.test_anomalous), 32, replace=False)
    keep = np.sort(np.concatenate([normal_test, anomalous_test]))
    return OneVsRest(8, full.class_name, full.train[:24], full.test[keep], full.test_anomalous[keep])


@pytest.fixture(scope="module")
def oe() -> np.ndarray:
    return load_natural_patches().images[[5, 900]]


def _spec(method: str, weights: Path) -> WorkerSpec:
    return WorkerSpec(method, "pseudo_huber", TrainSettings(), clip=ClipSpec(NAME, str(weights), **SCHEDULE))


def _direct_auc(detector: ClipDetector, model: torch.nn.Module, task: OneVsRest) -> float:
    with torch.no_grad():
        scores = torch.sigmoid(detector.eval()(clip_inputs(task.test, model))).numpy()
    return roc_auc_score(task.test_anomalous, scores)


def test_zero_shot_auc_is_the_detectors_own_and_ignores_oe_and_seed(weights, task, oe) -> None:
    worker = _FitnessWorker(task, _spec("clip_zero_shot", weights))
    assert worker.objective.name == "clip_zero_shot" and worker.objective.normal_class == "8"
    assert worker.pack == 1 and not packable(worker.objective)
    row = worker.evaluate(Job(8, (5,), 1, "search", 0, 0), oe[:1])
    assert row["status"] == "ok"
    model, tokenizer = load_clip(NAME, weights)
    expected = _direct_auc(ClipDetector(model, tokenizer, "8"), model, task)
    assert row["auc"] == pytest.approx(expected, abs=1e-12)
    other = worker.evaluate(Job(8, (900,), 7, "search", 0, 1), oe[1:])
    assert other["auc"] == row["auc"], "zero-shot: no training, so neither OE nor seed matters"


def test_bce_cl_equals_fine_tune_bce_cl_called_directly(weights, task, oe) -> None:
    worker = _FitnessWorker(task, _spec("bce_cl", weights))
    assert worker.pack == 1
    seed = 11
    row = worker.evaluate(Job(8, (5, 900), seed, "search", 0, 0), oe)
    assert row["status"] == "ok"
    result = train_and_evaluate(worker.task, oe, worker.objective, worker.settings, seed)
    assert result.auc == row["auc"], "same job, same seed: same AUC"

    model, tokenizer = load_clip(NAME, weights)
    detector = ClipDetector(model, tokenizer, "8")
    losses = fine_tune_bce_cl(detector, clip_inputs(task.train, model), clip_inputs(oe, model), seed, **SCHEDULE)
    np.testing.assert_allclose(result.epoch_losses, losses, rtol=1e-5)
    assert result.auc == pytest.approx(_direct_auc(detector, model, task), abs=1e-12)

    zero_shot = _direct_auc(ClipDetector(*load_clip(NAME, weights), "8"), model, task)
    assert result.auc != zero_shot, "fine-tuning changed the detector"
    assert worker.evaluate(Job(8, (5, 900), seed + 1, "search", 0, 0), oe)["auc"] != row["auc"]
    # The process-wide model was copied, never trained: it still holds the file's weights.
    cached, _ = cached_clip(NAME, weights, "cpu")
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(value, saved[key]) for key, value in cached.state_dict().items())


def test_the_model_is_loaded_once_per_process(weights, task, monkeypatch) -> None:
    from oesearch.models import clip as clip_models

    calls = []
    real = clip_models.load_clip
    monkeypatch.setattr(clip_models, "load_clip", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(clip_methods, "_MODELS", {})
    first = _FitnessWorker(task, _spec("clip_zero_shot", weights))
    second = _FitnessWorker(task, _spec("bce_cl", weights))
    assert len(calls) == 1, "loaded when the first worker started, then reused"
    assert first.objective.name == "clip_zero_shot"
    assert cached_clip(NAME, weights, "cpu")[0] is cached_clip(NAME, weights, "cpu")[0]
    second.evaluate(Job(8, (5,), 1, "search", 0, 0), load_natural_patches().images[[5]])
    assert len(calls) == 1


def test_missing_weights_fail_in_the_driver_before_any_worker(tmp_path: Path, monkeypatch) -> None:
    missing = tmp_path / "nowhere" / "ViT-L-14.pt"
    base = {"data": {"cache_dir": str(tmp_path / "cache")}, "search": {"population": 4, "generations": 0,
                                                                       "hall_of_fame": 1}}
    for method in ("clip_zero_shot", "bce_cl"):
        config = config_from_dict({**base, "train": {"method": method, "clip": {"weights": str(missing)}}})
        with pytest.raises(FileNotFoundError) as err:
            prepare(config, log=lambda _: None)
        assert str(missing) in str(err.value) and "'ViT-L-14'" in str(err.value)
    config = config_from_dict({**base, "train": {"method": "bce_cl"}})  # weights: null
    with pytest.raises(FileNotFoundError, match=r"train\.clip\.weights is null"):
        prepare(config, log=lambda _: None)
    # The worker says the same, should it ever get that far.
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _FitnessWorker(one_vs_rest(load_digits_split("train"), load_digits_split("test"), 8),
                       worker_spec(config_from_dict({"train": {"method": "bce_cl", "clip": {"weights": str(missing)}}})))


def test_unknown_architecture_is_a_config_error(tmp_path: Path, weights) -> None:
    config = config_from_dict({"data": {"cache_dir": str(tmp_path)}, "search": {
        "population": 4, "generations": 0, "hall_of_fame": 1},
        "train": {"method": "clip_zero_shot", "clip": {"model": "ViT-Q-99", "weights": str(weights)}}})
    with pytest.raises(ConfigError, match="ViT-Q-99.*not an open_clip architecture"):
        prepare(config, log=lambda _: None)


def test_clip_config_defaults_and_errors() -> None:
    config = config_from_dict({"train": {"method": "bce_cl", "clip": {"weights": "/w.pt"}}})
    clip = config.train.clip
    assert (clip.model, clip.weights, clip.epochs, clip.lr, clip.milestones, clip.batch_size, clip.momentum) == (
        "ViT-L-14", "/w.pt", 80, 1e-4, (50, 60, 70, 75), 128, 0.9)  # Appendix G.2
    assert worker_spec(config).clip == ClipSpec("ViT-L-14", "/w.pt")
    assert worker_spec(config_from_dict({})).clip is None
    for raw, message in [
        ({"train": {"method": "bce_cl"}, "run": {"pack": 4}}, "trains unpacked only"),
        ({"train": {"method": "clip_zero_shot", "compile": True}}, "train.compile"),
        ({"train": {"clip": {"epochs": 10}}}, "milestones"),
        ({"train": {"clip": {"weight": "x"}}}, "valid keys here: batch_size, epochs, lr, milestones, model, momentum"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(raw)
    assert config_from_dict({"train": {"method": "bce_cl"}, "run": {"pack": "auto"}}).run.pack == "auto"


def test_prompt_class_names_and_leave_one_class_out(weights) -> None:
    objective = make_objective("bce_cl", clip=ClipSpec(NAME, str(weights)), class_name="aquatic_mammals")
    assert objective.normal_class == "aquatic mammals" and objective.uses_oe
    assert not make_objective("clip_zero_shot", class_name="cat").uses_oe
    with pytest.raises(ValueError, match="class_name"):
        make_objective("bce_cl")
    loo = leave_one_class_out(load_digits_split("train"), load_digits_split("test"), 3)
    with pytest.raises(ValueError, match="one-vs-rest"):
        _FitnessWorker(loo, _spec("clip_zero_shot", weights))


def test_bf16_forward_keeps_the_eq4_logit_in_float32(weights, task) -> None:
    """Under bf16 autocast only the image encoder runs in bfloat16; the scaled similarities stay float32."""
    from oesearch.training.execution import forward_mode

    model, tokenizer = load_clip(NAME, weights)
    detector = ClipDetector(model, tokenizer, "8").eval()
    x = clip_inputs(task.test[:6], model)
    with torch.no_grad(), forward_mode("bf16", torch.device("cpu")):
        logits = detector(x)
        u = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
    assert logits.dtype == torch.float32
    by_hand = 100 * (u.double() @ detector.text.double().T)
    torch.testing.assert_close(logits.double(), by_hand[:, 1] - by_hand[:, 0], rtol=0, atol=1e-4)


def test_the_frequency_filter_reaches_clip_at_the_datas_own_size(weights, task, oe) -> None:
    """train.filter acts on every image CLIP sees, before the resize: here an LPF on the 8x8 digits."""
    from oesearch.models.clip import clip_transform
    from oesearch.training.augment import frequency_filter

    spec = _spec("clip_zero_shot", weights)
    filtered = _FitnessWorker(task, WorkerSpec(**{**spec.__dict__, "filter": ("lpf", 2)}))
    row = filtered.evaluate(Job(8, (5,), 1, "search", 0, 0), oe[:1])
    model, tokenizer = load_clip(NAME, weights)
    pixels = torch.tensor(task.test).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        logits = ClipDetector(model, tokenizer, "8").eval()(clip_transform(model)(frequency_filter(pixels, "lpf", 2)))
    assert row["auc"] == pytest.approx(roc_auc_score(task.test_anomalous, torch.sigmoid(logits).numpy()), abs=1e-12)
    plain = _FitnessWorker(task, spec).evaluate(Job(8, (5,), 1, "search", 0, 0), oe[:1])
    assert row["auc"] != plain["auc"]


def test_config_training_and_cli_read_one_method_registry() -> None:
    """oesearch.methods is the one list: config's choices, the CLI's, the objectives and packing follow it."""
    from oesearch import methods
    from oesearch.cli import build_parser

    assert methods.CLIP_METHODS == ("clip_zero_shot", "bce_cl")
    assert type(config_from_dict({}).train).model_fields["method"].annotation.__args__ == methods.NAMES
    for name, info in methods.METHODS.items():
        assert build_parser().parse_args(["--method", name]).method == name
        objective = make_objective(name, class_name="8")
        assert objective.name == name and packable(objective) == info.packable
        assert getattr(objective, "uses_oe", True) == info.uses_oe
        assert hasattr(objective, "prepare") == info.needs_centre and hasattr(objective, "fit_and_score") == info.clip
        refused = not info.packable
        try:
            config_from_dict({"train": {"method": name}, "run": {"pack": 2}})
        except Exception as err:  # noqa: BLE001
            assert refused and "trains unpacked only" in str(err), err
        else:
            assert not refused, f"{name} is not packable, yet run.pack 2 was accepted"


def test_benchmark_cells_run_the_clip_methods(weights, task, oe) -> None:
    """A benchmark's worker gives the same zero-shot AUC as the detector itself, and refuses CLIP under LOCO."""
    from oesearch.sweep.cells import BenchData, plan_benchmark
    from oesearch.distributed.cell_worker import BenchmarkWorkerBase
    from oesearch.data import ImageStore

    labels = np.array([8] * len(task.train) + [0] * 4)
    train = ImageStore(np.concatenate([task.train, task.test[:4]]), labels, tuple(str(c) for c in range(10)))
    test = ImageStore(task.test, np.where(task.test_anomalous, 0, 8), train.class_names)
    data = BenchData(train, test, ImageStore(oe, np.zeros(len(oe), dtype=np.int64), ("patch",)))
    raw = {"train": {"clip": {"model": NAME, "weights": str(weights), **SCHEDULE, "milestones": [1]}},
           "benchmark": {"classes": [8], "methods": ["clip_zero_shot"], "seeds": 1, "oe_sizes": [1]}}
    plan = plan_benchmark(config_from_dict(raw), data, worker_spec)
    row = BenchmarkWorkerBase(data, plan.setup).evaluate(plan.cells[0])
    model, tokenizer = load_clip(NAME, weights)
    assert row["status"] == "ok"
    assert row["auc"] == pytest.approx(_direct_auc(ClipDetector(model, tokenizer, "8"), model, task), abs=1e-12)

    raw["benchmark"]["protocol"] = "leave_one_class_out"
    with pytest.raises(ConfigError, match="leave_one_class_out"):
        plan_benchmark(config_from_dict(raw), data, worker_spec)
    raw["benchmark"]["protocol"] = "one_vs_rest"
    raw["train"]["clip"]["weights"] = str(weights.parent / "missing.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        plan_benchmark(config_from_dict(raw), data, worker_spec)
