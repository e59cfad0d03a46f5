"""Device-path checks on one CUDA GPU, for ``benchmarks/gpu_check.sh``; one JSON object on stdout's last line.

    python benchmarks/gpu_device_check.py

- the same seed gives the same batches on CPU and CUDA (batches drawn on the CPU), and the
  two trainings' step losses and AUCs, which then differ only by float rounding;
- de-duplication against the duplicated batch on CUDA (fp32 step losses, AUCs);
- the packing memory model against ``torch.cuda.max_memory_allocated`` at K = 8 and 32;
- K as ``auto_pack`` sizes it from free memory (capped at the compute cap);
- a training under each precision (fp32, tf32, bf16) runs and gives a finite AUC.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oesearch.training import PreparedTask, TrainSettings, make_objective, train_and_evaluate  # noqa: E402
from oesearch.training.memory import candidate_bytes, measured_peak_bytes, scoring_chunk  # noqa: E402
from oesearch.training.packed import auto_pack, candidate_bytes_for, train_packed  # noqa: E402
from oesearch.training.trainer import balanced_batches, batch_generator  # noqa: E402


def _rel(a, b) -> float:
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a_ - b_) / np.maximum(np.abs(b_), 1e-12)))


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch")
    cuda = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(2048, 32, 32, 3)).astype(np.uint8)
    test = rng.integers(0, 256, size=(1000, 32, 32, 3)).astype(np.uint8)
    test[500:, :4] = 255  # anomalies: a bright band, so AUCs are informative
    anomalous = np.r_[np.zeros(500, bool), np.ones(500, bool)]
    oe = rng.integers(0, 256, size=(1, 32, 32, 3)).astype(np.uint8)
    out: dict[str, object] = {"gpu": torch.cuda.get_device_name(cuda), "torch": torch.__version__,
                              "cuda": torch.version.cuda}
    cpu_task = PreparedTask.from_arrays(train, test, anomalous)
    gpu_task = PreparedTask.from_arrays(train, test, anomalous, cuda)
    objective = make_objective("hsc")

    # 1. Same batches on both devices.
    a = [x.cpu() for x in balanced_batches(cpu_task.train, cpu_task.normalise(oe), 128, batch_generator(7), None,
                                           cpu_task.prepare)]
    b = [x.cpu() for x in balanced_batches(gpu_task.train, gpu_task.normalise(oe), 128, batch_generator(7), None,
                                           gpu_task.prepare)]
    out["batches_max_abs_diff_cpu_vs_cuda"] = float(max((x - y).abs().max() for x, y in zip(a, b)))
    settings = TrainSettings(epochs=2, lr=1e-3, milestones=(), batch_size=128, dedup=False)
    r_cpu = train_and_evaluate(cpu_task, oe, objective, settings, 7, record_steps=20)
    r_gpu = train_and_evaluate(gpu_task, oe, objective, settings, 7, record_steps=20)
    out["cpu_vs_cuda_step_loss_rel"] = _rel(r_gpu.step_losses, r_cpu.step_losses)
    out["cpu_vs_cuda_auc"] = [r_cpu.auc, r_gpu.auc]

    # 2. De-duplication on CUDA.
    r_dedup = train_and_evaluate(gpu_task, oe, objective, dataclasses.replace(settings, dedup=True), 7,
                                 record_steps=20)
    out["cuda_dedup_vs_duplicated_step_loss_rel"] = _rel(r_dedup.step_losses, r_gpu.step_losses)
    out["cuda_dedup_vs_duplicated_auc"] = [r_gpu.auc, r_dedup.auc]
    oes = [rng.integers(0, 256, size=(1, 32, 32, 3)).astype(np.uint8) for _ in range(4)]
    p_dup = train_packed(gpu_task, oes, objective, settings, [1, 2, 3, 4], record_steps=20)
    p_ded = train_packed(gpu_task, oes, objective, dataclasses.replace(settings, dedup=True), [1, 2, 3, 4],
                         record_steps=20)
    out["cuda_packed4_dedup_vs_duplicated_step_loss_rel"] = _rel(p_ded.step_losses, p_dup.step_losses)
    out["cuda_packed4_dedup_vs_duplicated_auc"] = [p_dup.aucs, p_ded.aucs]

    # 3. The memory model against the measured peak.
    memory = {}
    one_epoch = TrainSettings(epochs=1, lr=1e-3, milestones=(), batch_size=128)
    for k in (8, 32):
        for dedup in (False, True):
            s = dataclasses.replace(one_epoch, dedup=dedup)
            oes_k = [rng.integers(0, 256, size=(1, 32, 32, 3)).astype(np.uint8) for _ in range(k)]
            torch.cuda.empty_cache()
            start = time.perf_counter()
            peak = measured_peak_bytes(lambda: train_packed(gpu_task, oes_k, objective, s, list(range(k))), cuda)
            rows = 129 if dedup else 256
            model = k * candidate_bytes(gpu_task.image_shape, rows, min(len(test), scoring_chunk(k))).total
            memory[f"K{k}{'_dedup' if dedup else ''}"] = {
                "measured_mib": round(peak / 2**20, 1), "model_mib": round(model / 2**20, 1),
                "model_over_measured": round(model / peak, 3), "seconds": round(time.perf_counter() - start, 2)}
    out["memory"] = memory
    free, total = torch.cuda.mem_get_info(cuda)
    out["free_gib"], out["total_gib"] = round(free / 2**30, 1), round(total / 2**30, 1)
    per, reserve = candidate_bytes_for(gpu_task, one_epoch, head=False)
    out["auto_pack"] = {"per_candidate_mib": round(per / 2**20, 1), "test_pass_mib": round(reserve / 2**20, 1),
                        "k": auto_pack(cuda, per_candidate=per, reserve=reserve)}

    # 4. Precisions.
    for precision in ("fp32", "tf32", "bf16"):
        s = dataclasses.replace(settings, precision=precision, dedup=True)
        start = time.perf_counter()
        r = train_and_evaluate(gpu_task, oe, objective, s, 7)
        out[f"precision_{precision}"] = {"auc": r.auc, "seconds": round(time.perf_counter() - start, 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
