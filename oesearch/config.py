"""Experiment configuration: one YAML per experiment, validated into typed sections.

The defaults of these models *are* the embedded default experiment
(``search_configs/embedded.yaml`` spells them out), and the only place a
default is written: the training layer's dataclasses read theirs with
:func:`field_default`, and :mod:`oesearch.training.settings` is the one bridge
from these sections to a worker's training settings.  Unknown keys are errors
that list the valid ones; bad values say what is allowed.  docs/configuration.md
is generated from these models (``python -m oesearch.config_docs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from oesearch.methods import CLIP_METHODS, NAMES
from oesearch.methods import method as method_info

__all__ = [
    "ConfigError",
    "Config",
    "DataConfig",
    "TrainConfig",
    "ModelConfig",
    "ClipConfig",
    "AugmentConfig",
    "FilterConfig",
    "SearchConfig",
    "IndexConfig",
    "RunConfig",
    "BenchmarkConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "field_default",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message says what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data sources ------------------------------------------------------------------


class DigitsSource(_Section):
    """scikit-learn's bundled 8x8 digits, split per class into train and test."""

    kind: Literal["digits"] = "digits"
    test_fraction: float = Field(0.5, gt=0, lt=1)
    split_seed: int = 0


class NaturalPatchesSource(_Section):
    """Grayscale patches of scikit-learn's two sample photographs (the embedded OE corpus)."""

    kind: Literal["natural_patches"] = "natural_patches"
    patch_size: int = Field(8, ge=2)
    scales: tuple[int, ...] = (2, 4, 8, 16)
    stride: int = Field(4, ge=1)


class ImageFolderSource(_Section):
    """A torchvision ImageFolder tree ``path/<class>/<image>``; for normal data ``path/train`` and ``path/test``."""

    kind: Literal["imagefolder"] = "imagefolder"
    path: str
    size: int | None = Field(None, ge=2, description="resize every image to size x size")


class Cifar10Source(_Section):
    """The official CIFAR-10 python batches (``cifar-10-batches-py``)."""

    kind: Literal["cifar10"] = "cifar10"
    path: str


class Cifar100Source(_Section):
    """The official CIFAR-100 python batches (``cifar-100-python``): 100 fine classes or 20 coarse superclasses."""

    kind: Literal["cifar100"] = "cifar100"
    path: str
    labels: Literal["fine", "coarse"] = "fine"


class IdxSource(_Section):
    """MNIST, Fashion-MNIST or EMNIST-letters idx files (raw or .gz); EMNIST letters are classes a..z."""

    kind: Literal["mnist", "fashion_mnist", "emnist_letters"]
    path: str


_SIZE = Field(224, ge=2, description="resize every image to size x size")


class ImageNet30Source(_Section):
    """ImageNet-30: ``path/train`` and ``path/test`` (or ``one_class_train``/``one_class_test``), 30 classes."""

    kind: Literal["imagenet30"] = "imagenet30"
    path: str
    size: int = _SIZE


class CubSource(_Section):
    """CUB-200-2011 (``CUB_200_2011`` folder) with its official train/test split."""

    kind: Literal["cub"] = "cub"
    path: str
    size: int = _SIZE


class DtdSource(_Section):
    """DTD (``dtd`` folder): train is ``labels/train{fold}.txt``, test ``labels/test{fold}.txt``."""

    kind: Literal["dtd"] = "dtd"
    path: str
    fold: int = Field(1, ge=1, le=10)
    size: int = _SIZE


class MVTecSource(_Section):
    """One MVTec-AD category: ``path/<category>/train/good`` and ``path/<category>/test/<defect>``; class 0 is good."""

    kind: Literal["mvtec"] = "mvtec"
    path: str
    category: str
    size: int = _SIZE


class TinyImagesSource(_Section):
    """80 Million Tiny Images ``tiny_images.bin``, minus the 1-based indices in ``exclude``, ``count`` drawn."""

    kind: Literal["tiny_images"] = "tiny_images"
    path: str
    exclude: str | None = Field(None, description="file of 1-based record indices to drop (80mn_cifar_idxs.txt)")
    count: int | None = Field(None, ge=1, description="records drawn at random; None: all (small files only)")
    subset_seed: int = 0


class Random300kSource(_Section):
    """The 300K random 80MTI images ``300K_random_images.npy`` (memory-mapped), optionally ``count`` of them."""

    kind: Literal["random_300k"] = "random_300k"
    path: str
    count: int | None = Field(None, ge=1)
    subset_seed: int = 0


class ImageNet22kSource(_Section):
    """ImageNet-22k ImageFolder ``path/<wnid>/`` minus every wnid in ``exclude`` (the ImageNet-1k classes)."""

    kind: Literal["imagenet22k"] = "imagenet22k"
    path: str
    exclude: str = Field(description="file of wnids to drop, one per line: all 1,000 ImageNet-1k classes")
    size: int = _SIZE
    per_class: int | None = Field(None, ge=1, description="at most this many images per class, drawn at random")
    subset_seed: int = 0


NormalSource = Annotated[
    Union[DigitsSource, ImageFolderSource, Cifar10Source, Cifar100Source, IdxSource, ImageNet30Source, CubSource,
          DtdSource, MVTecSource],
    Field(discriminator="kind"),
]
CorpusSource = Annotated[
    Union[NaturalPatchesSource, ImageFolderSource, Cifar10Source, Cifar100Source, IdxSource, TinyImagesSource,
          Random300kSource, ImageNet22kSource],
    Field(discriminator="kind"),
]


class DataConfig(_Section):
    normal: NormalSource = DigitsSource()
    corpus: CorpusSource = NaturalPatchesSource()
    normal_class: int = Field(8, ge=0, description="index of the normal class (one vs. rest)")
    cache_dir: str = Field("~/.cache/oesearch", description="decoded stores and neighbour indexes")


# --- training, search, run ----------------------------------------------------------


class AugmentConfig(_Section):
    """Batch augmentation on the device (SPEC section 5: full benchmarks only; off for searches)."""

    crop: int = Field(0, ge=0, description="zero padding in pixels before a random crop back to size; 0: off")
    flip: bool = Field(False, description="random horizontal flip")
    brightness: float = Field(0.0, ge=0, description="brightness factor from [1-b, 1+b]; 0: off")
    contrast: float = Field(0.0, ge=0, description="contrast factor from [1-c, 1+c]; 0: off")
    noise: float = Field(0.0, ge=0, description="std of Gaussian pixel noise (pixels in [0, 1]); 0: off")


class FilterConfig(_Section):
    """Frequency filter on every image: train, OE and test (paper Appendix C)."""

    kind: Literal["none", "lpf", "hpf"] = "none"
    magnitude: int = Field(0, ge=0, description="LPF: rows/columns zeroed at each edge; HPF: side of the zeroed centre")


class ClipConfig(_Section):
    """CLIP for train.method clip_zero_shot and bce_cl (paper Section 3.3; BCE-CL schedule of Appendix G.2)."""

    model: str = Field("ViT-L-14", description="open_clip architecture name (OpenAI weights: the -quickgelu name)")
    weights: str | None = Field(None, description="local weights file (a state_dict); never downloaded")
    epochs: int = Field(80, ge=1, description="BCE-CL epochs")
    lr: float = Field(1e-4, gt=0, description="BCE-CL SGD learning rate; the paper uses 2e-5 on CIFAR-10, CUB, "
                      "DTD and F/MNIST")
    milestones: tuple[int, ...] = (50, 60, 70, 75)
    batch_size: int = Field(128, ge=1, description="per side: B normal + B OE images per step")
    momentum: float = Field(0.9, ge=0, lt=1, description="Nesterov momentum")

    @model_validator(mode="after")
    def _milestones_within_epochs(self) -> "ClipConfig":
        if any(m < 1 or m > self.epochs for m in self.milestones):
            raise ValueError(f"milestones {list(self.milestones)} must lie in [1, epochs={self.epochs}]")
        return self


Method = Literal[NAMES]  # the registry's names (oesearch/methods.py)
TF32_COMPILE_REFUSED = ("train.precision tf32 with train.compile: tf32 sets PyTorch's fp32_precision flags, after "
                        "which inductor's reads of the legacy allow_tf32 flags raise (pytorch#166387); use precision "
                        "fp32 or bf16 with compile, or tf32 without compile")


class TrainConfig(_Section):
    method: Method = "hsc"
    hsc_radial: Literal["pseudo_huber", "l1", "l2", "l2_squared"] = "pseudo_huber"
    focal_gamma: float = Field(2.0, ge=0, description="Focal loss gamma (paper Section 4); 0 is BCE scaled by alpha")
    focal_alpha: float = Field(0.5, gt=0, lt=1, description="Focal loss weight of the outlier class; 0.5 on "
                               "balanced batches (paper Appendix F)")
    # Embedded defaults, calibrated with `oesearch signal` (docs/trust.md "Signal"): at batch 8 the OE image
    # explains about a third of HSC's AUC variance on 8x8 digits (ICC 0.35); at batch 32 or the paper's
    # 30 epochs at lr 1e-3 it explains almost none, and the search would rank seed luck.
    epochs: int = Field(15, ge=1)
    lr: float = Field(1e-2, gt=0)
    milestones: tuple[int, ...] = (12,)
    batch_size: int = Field(8, ge=1, description="per side: B normal + B OE images per step")
    weight_decay: float = Field(0.0, ge=0)
    augment: AugmentConfig = AugmentConfig()
    filter: FilterConfig = FilterConfig()
    precision: Literal["fp32", "bf16", "tf32"] = Field(
        "fp32", description="fp32: PyTorch's defaults (on CUDA that is float32 matmuls but cuDNN convolutions "
        "already in TF32, torch.backends.cudnn.allow_tf32 being true by default; on CPU plain float32); bf16: "
        "forward passes under bfloat16 autocast on the device; tf32: TF32 for CUDA matmuls too (no effect on "
        "CPU); tf32 with train.compile is refused (pytorch#166387)")
    channels_last: bool = Field(False, description="model weights and batches in NHWC memory order")
    compile: bool = Field(False, description="torch.compile the model (on CPU needs a C++ compiler)")
    dedup: bool = Field(True, description="with repeated OE rows in a batch (one OE image, or oe_size > 1 drawing "
                        "repeats) and no augmentation, compute each distinct OE row once, weighted by its "
                        "multiplicity in BatchNorm's statistics and the loss mean: the same training up to float "
                        "rounding at about half the arithmetic; false trains the duplicated batch (eager only: "
                        "with train.compile the duplicated batch is trained)")
    cudnn_benchmark: bool = Field(True, description="GPU workers let cuDNN benchmark and pick the fastest "
                                  "convolution algorithms (torch.backends.cudnn.benchmark); no effect on CPU")
    clip: ClipConfig = ClipConfig()

    @model_validator(mode="after")
    def _milestones_within_epochs(self) -> "TrainConfig":
        if any(m < 1 or m > self.epochs for m in self.milestones):
            raise ValueError(f"milestones {list(self.milestones)} must lie in [1, epochs={self.epochs}]")
        return self

    @model_validator(mode="after")
    def _clip_method(self) -> "TrainConfig":
        # train.clip.weights may stay null here (a shipped YAML cannot know the path); the driver checks the
        # file before any worker starts (oesearch.training.clip.check_clip).
        if self.precision == "tf32" and self.compile:
            raise ValueError(TF32_COMPILE_REFUSED)
        if self.method in CLIP_METHODS and (self.channels_last or self.compile):
            raise ValueError(f"train.method {self.method}: train.channels_last and train.compile apply to the "
                             "LeNet/WideResNet trainer only; set them to false")
        return self


class ModelConfig(_Section):
    """The network phi's setup (oesearch/models/setup.py); the defaults are what the paper's reference code trains."""

    bias: bool | Literal["auto"] = Field(
        "auto", description="a bias on every convolution and linear layer of phi (the WideResNet: its feature "
        "layer); auto: true (the reference scripts' bias=True), false for dsad and dsvdd, whose hypersphere "
        "would collapse")
    batchnorm_affine: bool | Literal["auto"] = Field(
        "auto", description="BatchNorm's trainable scale and shift; auto: true (the reference ties it to bias), "
        "false for dsad and dsvdd")
    init: Literal["reference", "as_written"] = Field(
        "reference", description="reference: PyTorch's default, what the reference trains (its trainer resets "
        "every module); as_written: what its model code writes (LeNet: Xavier-normal; WideResNet: Kaiming-normal, "
        "spatial-gate BatchNorm 0)")


class IndexConfig(_Section):
    """The neighbour index: exact ``flat``, or ``ivf`` / ``ivfpq`` for corpora past about 1M items."""

    kind: Literal["flat", "ivf", "ivfpq"] = "flat"
    nlist: int | None = Field(None, ge=1, description="IVF cells; None: about 4 * sqrt(corpus size)")
    nprobe: int = Field(32, ge=1, description="IVF cells searched per draw (>= nlist: exhaustive)")
    pq_m: int = Field(64, ge=1, description="ivfpq: bytes per vector; must divide the image size H*W*C")
    bound_dims: int | Literal["auto"] = Field(
        "auto", description="flat: principal components of the lower bound that prunes exact pool searches "
        "(results unchanged); 0 turns it off; auto: 255 for corpora of >= 20,000 images of >= 1,024 values")

    @field_validator("bound_dims")
    @classmethod
    def _bound_dims(cls, value: int | str) -> int | str:
        if value != "auto" and value < 0:
            raise ValueError("bound_dims must be 'auto' or a non-negative integer")
        return value


class ValidationConfig(_Section):
    """How the final candidates are re-scored on fresh seeds, and the random images they are compared with."""

    scheme: Literal["race", "fixed"] = Field(
        "race", description="race: the top 2 x hall_of_fame by search fitness race on fresh seeds, a candidate "
        "dropping out once it is significantly behind the leader; fixed: the hall of fame on `seeds` fresh seeds "
        "each (the paper's validation)")
    seeds: int = Field(4, ge=0, description="race: fresh seeds of the first round; fixed: fresh seeds per entry")
    round_seeds: int = Field(4, ge=1, description="race: fresh seeds added to each survivor per later round")
    max_seeds: int = Field(8, ge=1, description="race: fresh seeds per candidate at most")
    random_panel: int = Field(32, ge=0, description="random images of generation 0 re-scored on the validation "
                              "seeds, the reference every find is compared with on the same seeds; 0: none")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level of the race's tests and of every CI")

    @model_validator(mode="after")
    def _seeds_within_max(self) -> "ValidationConfig":
        if self.scheme == "race" and not 1 <= self.seeds <= self.max_seeds:
            raise ValueError(f"race: seeds {self.seeds} must lie in [1, max_seeds={self.max_seeds}]")
        return self


class SearchConfig(_Section):
    mode: Literal["best", "worst"] = "worst"
    strategy: Literal["evolution", "random", "aging"] = Field(
        "evolution", description="evolution: the paper's Algorithm 1; random: the random-search baseline "
        "(Appendix D); aging: regularized evolution (Real et al. 2019), each generation adds aging_batch "
        "mutated children of tournament winners and removes as many of the oldest individuals")
    population: int = Field(16, ge=2)
    generations: int = Field(12, ge=0, description="generations after the initial one")
    tournament_size: int = Field(3, ge=1)
    mate_chance: float = Field(0.05, ge=0, le=1)
    mutation_chance: float = Field(0.55, ge=0, le=1)
    pool: int | Literal["all"] = Field(10_000, description="random candidate pool per draw, or 'all'")
    k_nearest: int = Field(50, ge=1, description="final pool: pick among the k nearest in the pool")
    repetitions: int = Field(4, ge=1, description="training seeds averaged into one fitness")
    oe_size: int = Field(1, ge=1, description="corpus images per individual")
    hall_of_fame: int = Field(5, ge=1)
    validation: ValidationConfig = ValidationConfig()
    rescore: Literal["none", "survivors"] = Field(
        "none", description="survivors: an individual that survives selection unchanged gets rescore_seeds more "
        "seeds each generation, its fitness the mean over all of them (evolution only); none: the paper's, a "
        "fitness once measured is kept")
    rescore_seeds: int = Field(2, ge=1, description="seeds added to a survivor per generation (rescore: survivors)")
    aging_batch: int | None = Field(None, ge=1, description="aging: children per generation; None: population // 2")
    index: IndexConfig = IndexConfig()

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "validation_seeds" in data:
            raise ValueError("search.validation_seeds is now search.validation (scheme, seeds, max_seeds, "
                             "random_panel); for the paper's five fresh seeds per entry write "
                             "search.validation: {scheme: fixed, seeds: 5}")
        return data

    @property
    def children_per_generation(self) -> int:
        """Individuals a generation after the first creates (aging: its batch; otherwise the population)."""
        if self.strategy == "aging":
            return self.aging_batch or max(1, self.population // 2)
        return self.population

    @field_validator("pool")
    @classmethod
    def _positive_pool(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("pool must be a positive integer or 'all'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "SearchConfig":
        if self.tournament_size > self.population:
            raise ValueError(f"tournament_size {self.tournament_size} exceeds population {self.population}")
        if self.pool != "all" and self.k_nearest > self.pool:
            raise ValueError(f"k_nearest {self.k_nearest} exceeds pool {self.pool}")
        if self.hall_of_fame > self.population + self.children_per_generation * self.generations:
            raise ValueError("hall_of_fame exceeds the number of individuals the search evaluates")
        if self.rescore != "none" and self.strategy != "evolution":
            raise ValueError(f"rescore: {self.rescore} applies to strategy evolution only (got {self.strategy})")
        if self.strategy == "aging" and self.children_per_generation > self.population:
            raise ValueError(f"aging_batch {self.aging_batch} exceeds population {self.population}")
        return self


class RunConfig(_Section):
    seed: int = Field(0, ge=0)
    out: str = Field("runs", description="parent folder of run directories")
    address: str | None = Field(
        None, description="Ray cluster address, 'auto', or 'local'; None joins a cluster started on this machine "
        "with `ray start` (or RAY_ADDRESS), else starts a local instance")
    storage: str | None = Field(
        None, description="shared storage for run directories: a path (runs are written there) or a URI such as "
        "s3://bucket/runs (runs are written on the head node and mirrored there after every generation)")
    workers: int | None = Field(None, ge=1, description="fitness workers; None: what the live nodes hold at once "
                                "(one per CPU, or per GPU share)")
    gpus_per_worker: float = Field(0.25, gt=0, le=1, description="GPU share of each fitness worker; when not "
                                   "given and run.pack is not 1 it is 1 (one worker per GPU: a packed worker sizes "
                                   "K from the GPU's free memory, which time-sliced neighbours would distort)")
    max_retries: int = Field(2, ge=0, description="retries of an evaluation that failed (worker or node died, "
                             "raised, NaN loss, timed out)")
    eval_timeout: float | None = Field(None, gt=0, description="seconds after which a running evaluation counts "
                                       "as hung: its worker is replaced and the evaluation retried; None: no limit")
    pack: int | Literal["auto"] = Field(1, description="trainings per worker call, trained as one packed program; "
                                        "'auto': what each worker's free GPU memory holds (1 on CPU, where training is "
                                        "compute-bound). Above 1, float rounding depends on which jobs share a call, "
                                        "so results are reproducible only to within that")

    @model_validator(mode="before")
    @classmethod
    def _one_worker_per_gpu_when_packing(cls, data: Any) -> Any:
        if isinstance(data, dict) and "gpus_per_worker" not in data and data.get("pack", 1) != 1:
            data = {**data, "gpus_per_worker": 1.0}
        return data

    @field_validator("pack")
    @classmethod
    def _positive_pack(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("pack must be a positive integer or 'auto'")
        return value


# --- benchmarks (``oesearch benchmark``) ----------------------------------------------

# The objectives a benchmark can compare: exactly ``train.method``'s choices, so new methods flow through.
BenchmarkMethod = Method
_TRAIN_KEYS = tuple(k for k in TrainConfig.model_fields if k != "method")


def _class_list(value: str | tuple[int, ...]) -> str | tuple[int, ...]:
    """``all``, or distinct non-negative class indices (benchmark.classes, campaign.classes)."""
    if value != "all":
        if not value:
            raise ValueError("classes must be 'all' or a non-empty list of class indices")
        if any(c < 0 for c in value) or len(set(value)) != len(value):
            raise ValueError("classes must be distinct non-negative class indices")
    return value


class BenchmarkConfig(_Section):
    """Classes x methods x OE sizes x seeds, one training and test AUC per cell (``oesearch benchmark``).

    The defaults run every digit class of the embedded default against the five
    objectives with the full patch corpus as OE, 3 seeds each (150 trainings of
    about 0.1 s each on a CPU core).
    """

    protocol: Literal["one_vs_rest", "leave_one_class_out", "split"] = Field(
        "one_vs_rest", description="one_vs_rest: the class is normal; leave_one_class_out: the class is the only "
        "anomaly; split: the OE is the training images of split_oe_classes other classes of the normal dataset, "
        "which never appear at test time (data.corpus is ignored)")
    classes: Literal["all"] | tuple[int, ...] = Field(
        "all", description="the normal classes (leave_one_class_out: the anomalous classes), or all")
    methods: tuple[BenchmarkMethod, ...] = Field(  # type: ignore[valid-type]
        ("hsc", "bce", "focal", "dsad", "dsvdd"), min_length=1, description="train.method of each column")
    seeds: int = Field(3, ge=1, description="repetitions per (class, method, OE size)")
    oe_sizes: Literal["sweep"] | tuple[int | Literal["all"], ...] = Field(
        ("all",), description="OE sizes: ints and/or all (the whole corpus); sweep: 1, 2, 4, ... and all")
    oe_draw: Literal["images", "classes"] = Field(
        "images", description="images: k random corpus images per repetition; classes: every image of k random "
        "corpus classes per repetition")
    split_oe_classes: int = Field(4, ge=1, description="split protocol: how many classes serve as OE")
    overrides: dict[BenchmarkMethod, dict[str, Any]] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="per-method train settings, e.g. {dsvdd: {epochs: 50}}")

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: str | tuple[int, ...]) -> str | tuple[int, ...]:
        return _class_list(value)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("methods must not repeat")
        return value

    @field_validator("oe_sizes", mode="before")
    @classmethod
    def _one_size(cls, value: Any) -> Any:
        return (value,) if isinstance(value, int) or value == "all" else value

    @field_validator("oe_sizes")
    @classmethod
    def _oe_sizes(cls, value: str | tuple) -> str | tuple:
        if value != "sweep":
            if not value:
                raise ValueError("oe_sizes must be 'sweep' or a non-empty list of sizes and/or 'all'")
            if any(isinstance(k, int) and k < 1 for k in value) or len(set(value)) != len(value):
                raise ValueError("oe_sizes must be distinct positive integers and/or 'all'")
        return value

    @field_validator("overrides")
    @classmethod
    def _override_keys(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for method, override in value.items():
            if not isinstance(override, dict):
                raise ValueError(f"overrides.{method} must be a mapping of train keys, got {override!r}")
            unknown = sorted(set(override) - set(_TRAIN_KEYS))
            if unknown:
                raise ValueError(f"overrides.{method}: unknown train key(s) {unknown}; valid keys: "
                                 f"{', '.join(_TRAIN_KEYS)}")
        return value


class CampaignConfig(_Section):
    """The grid of searches ``oesearch campaign`` runs on one worker pool: classes x methods x modes (x strategies
    x seeds).

    The default is the whole grid of the paper's Table 3 for the experiment: every normal class, HSC and BCE,
    best and worst, with the config's ``search.strategy`` and ``run.seed``.  Every other setting is the
    config's, shared by all its searches.
    """

    classes: Literal["all"] | tuple[int, ...] = Field("all", description="the normal classes, or all")
    methods: tuple[Method, ...] = Field(("hsc", "bce"), min_length=1,  # type: ignore[valid-type]
                                        description="train.method of the searches")
    modes: tuple[Literal["best", "worst"], ...] = Field(("best", "worst"), min_length=1,
                                                        description="search.mode of the searches")
    strategies: tuple[Literal["evolution", "random", "aging"], ...] | None = Field(
        None, description="search.strategy of the searches (default: the config's search.strategy)")
    seeds: tuple[int, ...] | None = Field(None, description="run.seed of the searches (default: the config's run.seed)")

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: str | tuple[int, ...]) -> str | tuple[int, ...]:
        return _class_list(value)

    @field_validator("methods", "modes", "strategies", "seeds")
    @classmethod
    def _distinct(cls, value: tuple | None) -> tuple | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("must be a non-empty list without repeats")
        return value


class Config(_Section):
    name: str = "embedded"
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    model: ModelConfig = ModelConfig()
    search: SearchConfig = SearchConfig()
    run: RunConfig = RunConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    campaign: CampaignConfig = CampaignConfig()

    @model_validator(mode="after")
    def _packable_method(self) -> "Config":
        info = method_info(self.train.method)
        if not info.packable and isinstance(self.run.pack, int) and self.run.pack > 1:
            why = "CLIP" if info.clip else "centre-based" if info.needs_centre else "no OE"
            raise ValueError(f"run.pack {self.run.pack}: train.method {self.train.method} ({why}) trains "
                             "unpacked only; use run.pack 1 or auto")
        return self


# --- loading and overrides ------------------------------------------------------------


def _section_fields(loc: tuple[Any, ...], kind: str | None = None) -> list[str]:
    """Valid keys of the model that ``loc`` (an error location minus the bad key) points into.

    In a data source, ``kind`` picks the source model; without it, the keys of every kind are listed.
    """
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:  # a discriminated source: list the union of its members' keys
            members = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            chosen = [m for m in members if kind in m.model_fields["kind"].annotation.__args__] or members
            return sorted({k for m in chosen for k in m.model_fields})
    return sorted(model.model_fields)


# The discriminator values pydantic puts into an error's location; they are not keys the user wrote.
_SOURCE_KINDS = frozenset(
    kind for union in (NormalSource, CorpusSource) for model in union.__origin__.__args__
    for kind in model.model_fields["kind"].annotation.__args__
)


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        kind = next((p for p in e["loc"] if isinstance(p, str) and p in _SOURCE_KINDS), None)
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _SOURCE_KINDS))
        key = ".".join(map(str, loc)) or "(top level)"
        if e["type"] == "extra_forbidden":
            valid = ", ".join(_section_fields(loc[:-1], kind))
            lines.append(f"unknown key '{key}'; valid keys here: {valid}")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain mapping into a :class:`Config`, raising :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a configuration must be a mapping, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested mapping."""
    result = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(text)
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # one line: where, and what the parser expected
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {what}; fix the file or give another --config") from None
    except (OSError, UnicodeDecodeError) as err:  # unreadable, or not text at all
        raise ConfigError(f"cannot read the config file {path} ({err}); give a readable YAML file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The config in ``path`` (or the embedded default) with ``overrides`` applied."""
    raw = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(raw, list(overrides)))


def field_default(model: type[BaseModel], name: str) -> Any:
    """The default of ``model``'s field ``name``: the one place a default is written (training's
    dataclasses take theirs from here)."""
    return model.model_fields[name].get_default(call_default_factory=True)


def config_to_dict(config: Config) -> dict[str, Any]:
    """A plain, YAML-ready mapping with every resolved value."""
    return config.model_dump(mode="json")
