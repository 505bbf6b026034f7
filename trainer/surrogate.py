"""A surrogate objective: val_bpb predicted from the config by a model fitted to real measurements.

For fast method research and tests: milliseconds per call instead of a minute of training. It is
fitted to ``trainer/data/surrogate_measurements.json`` (real runs of this trainer on the cpu-tiny
preset under a FLOP budget; see that file's header and ``bench/trainer_collect_measurements.py``)
and every summary it returns says ``"objective": "surrogate"``.

The model, and why it is this simple:
- features: log2 batch, log learning rates, log(1 - beta), weight decay, schedule ratios, the
  fraction of full-context layers and log2 head size, standardised; DEVICE_BATCH_SIZE is left out
  because it does not change the maths;
- val_bpb of successful runs: GP regression (an RBF kernel, no linear term) on ln(val_bpb), with a
  relevance per feature and the noise level chosen by exact leave-one-out error. A search goes to
  the model's optimum, so the model must not promise what it does not know: the value it gives is
  the posterior mean plus one posterior sd, and outside the measured support (more than
  SUPPORT_RADIUS fixed knob steps from every measured config, or beyond a feature's measured
  range) it is never better than the nearest measured config and worsens with the distance.
  Every summary says whether it was ``extrapolated``, how far (``support_distance``) and what the
  nearest measured config gave. There is no floor (an earlier version clipped at the best measured
  value minus a margin, and many different configs tied there, at an optimum that trained for
  real was worse than the default); the 8-bit ceiling is approached smoothly. The measurements
  include configs that searches on the surrogate ended on and passed through, trained for real
  (``bench/surrogate_rounds.py``), so the model is checked where searches go;
- divergence: L2-regularised logistic regression on the features and their squares; a run
  diverges with the fitted probability (drawn from the (maths, seed) generator; under 5% counts as 0),
  because near the edge the same config diverges for some seeds and not others;
- seed noise: as in the real trainer, where a seed fixes the initialisation and the data order,
  a part shared by every config of a seed plus a part of the (config, seed) pair, both Gaussian
  with sds fitted to real runs of several configs on the same seeds (``trainer/seed_noise.py``;
  0.027 and 0.024 on the shipped data, see bench/TRAINER_RESULTS.md); the pair's part is keyed by
  what the config computes, so a change that does not change the maths (DEVICE_BATCH_SIZE) gives
  the identical value, as it does in the real trainer (seed 2: 3.0922887 with 16 and with 4
  sequences per micro-batch);
- budget: val_bpb shifts by ``budget_slope x ln(FLOPs / fitted FLOPs)`` (slope fitted to the
  default config measured at other budgets), and a wall-clock budget is turned into FLOPs with
  a fitted seconds-per-step model (``a + b x FLOPs per step``), so smaller batches buy more
  steps per second as with the real trainer.

``surrogate_fit_report()`` gives k-fold held-out Spearman correlation, MAE and RMSE.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.budget import check_budget
from trainer.flops import VOCAB_SIZE, flops_per_step, flops_per_token, layer_windows
from trainer.outcomes import TrainingSummary
from trainer.schema import PRESET_SETTINGS, ConfigError, config_to_json, model_width, validate_config
from trainer.seed_noise import (
    NoiseSplit,
    config_generator,
    estimate_split,
    load_split_records,
    seed_generator,
    split_table,
)

PRESET = "cpu-tiny"
MEASUREMENTS_PATH = Path(__file__).resolve().parent / "data" / "surrogate_measurements.json"
KERNEL_LENGTHSCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # in standard deviations of a feature
KERNEL_NOISE_GRID = (1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3)  # noise-to-signal variance ratios
RELEVANCE_FACTORS = (0.0, 0.5)  # drop a feature or widen its scale; narrowing overfitted in k-fold tests
RELEVANCE_PASSES = 2
LOGISTIC_L2 = 1.0
FOLDS = 5
DIVERGENCE_FLOOR = 0.05
PESSIMISM = 1.0  # posterior sds of ln(val_bpb) added to the mean: thin data promise less
SUPPORT_RADIUS = 1.5  # steps (SUPPORT_STEPS) from the nearest measured config that still count as measured
SUPPORT_SLOPE = 0.04  # val_bpb added per step beyond the support radius or the measured range (chosen on rounds 1-2)
UNIFORM_BPB = 8.0  # a uniform byte model: no run does worse
CEILING_KNEE = 6.0
FEATURE_NAMES = (
    "log2_batch",
    "ln_matrix_lr",
    "ln_embedding_lr",
    "ln_unembedding_lr",
    "ln_scalar_lr",
    "weight_decay",
    "ln_one_minus_beta1",
    "ln_one_minus_beta2",
    "warmup_ratio",
    "warmdown_ratio",
    "final_lr_frac",
    "long_layer_fraction",
    "log2_head_dim",
)

# One "step" of each feature for the support distance, in the feature's own units: about the change
# of one knob that the measurements show to matter (a doubling of the batch, a learning rate x3, ...).
# Fixed, not fitted: where the data are thin a fitted length scale is long (the landscape looks
# smooth) and would let a search wander far from every measurement.
SUPPORT_STEPS = {
    "log2_batch": 1.0,
    "ln_matrix_lr": math.log(3.0),
    "ln_embedding_lr": math.log(3.0),
    "ln_unembedding_lr": math.log(3.0),
    "ln_scalar_lr": math.log(3.0),
    "weight_decay": 0.1,
    "ln_one_minus_beta1": math.log(2.0),
    "ln_one_minus_beta2": math.log(2.0),
    "warmup_ratio": 0.15,
    "warmdown_ratio": 0.15,
    "final_lr_frac": 0.15,
    "long_layer_fraction": 0.34,
    "log2_head_dim": 1.0,
}

SUPPORT_SCALE = np.array([SUPPORT_STEPS[name] for name in FEATURE_NAMES])


def config_features(config: Mapping[str, Any]) -> np.ndarray:
    windows = layer_windows(str(config["WINDOW_PATTERN"]), int(config["DEPTH"]), PRESET)
    context = PRESET_SETTINGS[PRESET].context_length
    beta1, beta2 = config["ADAM_BETAS"]
    return np.array(
        [
            math.log2(config["TOTAL_BATCH_SIZE"]),
            math.log(config["MATRIX_LR"]),
            math.log(config["EMBEDDING_LR"]),
            math.log(config["UNEMBEDDING_LR"]),
            math.log(config["SCALAR_LR"]),
            config["WEIGHT_DECAY"],
            math.log(1 - beta1),
            math.log(1 - beta2),
            config["WARMUP_RATIO"],
            config["WARMDOWN_RATIO"],
            config["FINAL_LR_FRAC"],
            sum(window >= context for window in windows) / len(windows),
            math.log2(config["HEAD_DIM"]),
        ]
    )


@dataclass(frozen=True)
class Standardizer:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        scale = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(scale > 1e-12, scale, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


def square_design(z: np.ndarray) -> np.ndarray:
    return np.hstack([np.ones((z.shape[0], 1)), z, z**2])


def fit_logistic(design: np.ndarray, labels: np.ndarray, strength: float = LOGISTIC_L2) -> np.ndarray:
    """Newton's method on the L2-penalised log-likelihood (a few dozen features: exact and fast)."""
    weights = np.zeros(design.shape[1])
    penalty = strength * np.eye(design.shape[1])
    penalty[0, 0] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -30, 30)))
        gradient = design.T @ (p - labels) + penalty @ weights
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def fold_indices(count: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return [order[fold::folds] for fold in range(folds)]


def rbf_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RBF on already length-scaled inputs: the correlation of two configs' values falls with their distance."""
    squared = (a**2).sum(axis=1)[:, None] + (b**2).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.exp(-0.5 * np.maximum(squared, 0.0))


def best_noise_loo(kernel: np.ndarray, centred: np.ndarray) -> tuple[float, float]:
    """(leave-one-out MSE, noise level) of kernel ridge, best over KERNEL_NOISE_GRID.

    One eigendecomposition serves every noise level: (K + l I)^-1 = Q diag(1 / (e + l)) Q^T, and the
    exact leave-one-out residual of point i is alpha_i / [(K + l I)^-1]_ii.
    """
    eigenvalues, vectors = np.linalg.eigh(kernel)
    eigenvalues = np.maximum(eigenvalues, 0.0)
    projected = vectors.T @ centred
    squared_vectors = vectors**2
    best = (math.inf, KERNEL_NOISE_GRID[0])
    for noise in KERNEL_NOISE_GRID:
        inverse_eigen = 1.0 / (eigenvalues + noise)
        alpha = vectors @ (inverse_eigen * projected)
        loo = float(((alpha / (squared_vectors @ inverse_eigen)) ** 2).mean())
        if loo < best[0]:
            best = (loo, noise)
    return best


@dataclass(frozen=True)
class BpbPrediction:
    """What the model says of some configs: the value a run gets and how far it is from the measurements."""

    value: np.ndarray  # the val_bpb the surrogate uses (pessimistic: posterior mean + PESSIMISM sds, support-guarded)
    posterior_mean: np.ndarray  # the GP's own mean, before pessimism and the support guard
    posterior_sd: np.ndarray  # in ln(val_bpb)
    support_distance: np.ndarray  # to the nearest measured config, in SUPPORT_STEPS
    nearest_measured: np.ndarray  # mean measured val_bpb of that config
    extrapolated: np.ndarray  # bool: outside the measured support


@dataclass(frozen=True)
class BpbModel:
    """GP regression (RBF kernel with a relevance per feature) of ln(val_bpb), pessimistic where it does not know.

    ln(val_bpb) because the measured values are heavy-tailed (2.6 for good configs, up to 8 for
    configs that barely learn) and a search cares about ratios near the top, not the tail. Each
    standardised feature gets an inverse length scale ("relevance", 0 = ignored), chosen by
    coordinate descent on the exact leave-one-out error; the noise level the same way.

    A search goes to the model's optimum, so the optimum must be real. Three rules keep it so:
    - no linear term: far from the data the posterior mean returns to the mean of the measurements
      instead of extrapolating a trend without limit (a linear term had made a config with
      extreme learning rates the surrogate's best, 0.75 better than the default; trained for
      real it was worse than the default);
    - the value is the posterior mean plus PESSIMISM posterior sds, so where the data are thin
      the model promises less;
    - outside the measured support (farther than SUPPORT_RADIUS steps from every measured config,
      or beyond the measured range of any feature) the value is never better than the nearest
      measured config's mean, and grows by SUPPORT_SLOPE per step beyond it. Steps are fixed
      knob units (SUPPORT_STEPS), every feature counted: a knob the data call irrelevant inside
      their range may matter outside it.
    There is no floor: distinct configs never tie by clipping; only the 8-bit ceiling is
    approached smoothly (a uniform byte model) and never reached.
    """

    scaler: Standardizer
    relevance: np.ndarray
    noise: float
    train_z: np.ndarray
    alpha: np.ndarray
    inverse: np.ndarray  # (K + noise I)^-1, for the posterior variance
    target_mean: float
    target_scale: float
    support_z: np.ndarray  # distinct measured configs, in SUPPORT_STEPS
    support_values: np.ndarray  # their mean measured val_bpb
    box_low: np.ndarray
    box_high: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> BpbModel:
        scaler = Standardizer.fit(x)
        z = scaler(x)
        target = np.log(y)
        target_scale = float(target.std()) or 1.0
        centred = (target - target.mean()) / target_scale  # unit signal variance, matching the kernel's

        def loo(relevance: np.ndarray) -> tuple[float, float]:
            return best_noise_loo(rbf_kernel(z * relevance, z * relevance), centred)

        relevance = np.full(z.shape[1], 1.0 / KERNEL_LENGTHSCALES[0])
        error = math.inf
        for lengthscale in KERNEL_LENGTHSCALES:
            candidate_error, _ = loo(np.full(z.shape[1], 1.0 / lengthscale))
            if candidate_error < error:
                error, relevance = candidate_error, np.full(z.shape[1], 1.0 / lengthscale)
        for _ in range(RELEVANCE_PASSES):
            for feature in range(z.shape[1]):
                base = relevance[feature]
                for factor in RELEVANCE_FACTORS:
                    trial = relevance.copy()
                    trial[feature] = base * factor
                    candidate_error, _ = loo(trial)
                    if candidate_error < error - 1e-12:
                        error, relevance = candidate_error, trial
        _, noise = loo(relevance)
        scaled = z * relevance
        inverse = np.linalg.inv(rbf_kernel(scaled, scaled) + noise * np.eye(len(y)))
        support = x / SUPPORT_SCALE
        distinct, index = np.unique(support.round(9), axis=0, return_inverse=True)
        index = index.reshape(-1)
        values = np.array([y[index == i].mean() for i in range(len(distinct))])
        return cls(
            scaler, relevance, noise, scaled, inverse @ centred, inverse, float(target.mean()), target_scale,
            distinct, values, support.min(axis=0), support.max(axis=0),
        )

    def explain(self, x: np.ndarray) -> BpbPrediction:
        z = self.scaler(x)
        cross = rbf_kernel(z * self.relevance, self.train_z)
        latent_mean = cross @ self.alpha
        latent_variance = np.maximum(1.0 - np.einsum("ij,jk,ik->i", cross, self.inverse, cross), 0.0)
        log_mean = self.target_mean + self.target_scale * latent_mean
        log_sd = self.target_scale * np.sqrt(latent_variance)
        value = np.exp(log_mean + PESSIMISM * log_sd)

        support = x / SUPPORT_SCALE
        squared = ((support[:, None, :] - self.support_z[None, :, :]) ** 2).sum(axis=2)
        nearest = squared.argmin(axis=1)
        distance = np.sqrt(squared[np.arange(len(x)), nearest])
        beyond_range = (np.maximum(support - self.box_high, 0.0) + np.maximum(self.box_low - support, 0.0)).sum(axis=1)
        extrapolated = (distance > SUPPORT_RADIUS) | (beyond_range > 1e-9)
        nearest_value = self.support_values[nearest]
        excess = SUPPORT_SLOPE * (np.maximum(distance - SUPPORT_RADIUS, 0.0) + beyond_range)
        # Grows by SUPPORT_SLOPE per step at first and bends below the ceiling, never under the nearest value.
        room = UNIFORM_BPB - nearest_value
        guard = nearest_value + room * np.tanh(excess / room)
        value = soft_ceiling(value)
        return BpbPrediction(
            value=np.where(extrapolated, np.maximum(value, guard), value),
            posterior_mean=np.exp(log_mean),
            posterior_sd=log_sd,
            support_distance=distance,
            nearest_measured=nearest_value,
            extrapolated=extrapolated,
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.explain(x).value


def soft_ceiling(value: np.ndarray | float) -> np.ndarray:
    """Values above CEILING_KNEE bend towards UNIFORM_BPB without reaching it: strictly increasing, no ties."""
    array = np.asarray(value, dtype=float)
    room = UNIFORM_BPB - CEILING_KNEE
    bent = CEILING_KNEE + room * np.tanh((array - CEILING_KNEE) / room)
    return np.where(array > CEILING_KNEE, bent, array)


@dataclass(frozen=True)
class DivergenceModel:
    scaler: Standardizer
    weights: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, diverged: np.ndarray) -> DivergenceModel:
        scaler = Standardizer.fit(x)
        return cls(scaler, fit_logistic(square_design(scaler(x)), diverged.astype(float)))

    def probability(self, x: np.ndarray) -> np.ndarray:
        logits = np.clip(square_design(self.scaler(x)) @ self.weights, -30, 30)
        return 1.0 / (1.0 + np.exp(-logits))


@dataclass(frozen=True)
class Surrogate:
    bpb: BpbModel
    divergence: DivergenceModel | None  # None when no measured run diverged
    noise: NoiseSplit
    reference_flops: float
    budget_slope: float
    seconds_per_step: tuple[float, float]  # intercept, per FLOP
    eval_seconds: float
    startup_seconds: float
    measurement_count: int
    corpus: str

    @property
    def noise_sd(self) -> float:
        """The sd of one run's value across seeds (both components)."""
        return self.noise.total_sd


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    def ranks(values: Sequence[float]) -> np.ndarray:
        array = np.asarray(values, dtype=float)
        order = array.argsort()
        result = np.empty(len(array))
        result[order] = np.arange(len(array))
        for value in np.unique(array):  # average ranks of ties
            tied = array == value
            result[tied] = result[tied].mean()
        return result

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def load_measurements(path: Path = MEASUREMENTS_PATH) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(
            f"surrogate measurements not found at {path}; run bench/trainer_collect_measurements.py"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _at_reference_budget(records: list[dict[str, Any]], reference_flops: float) -> list[dict[str, Any]]:
    return [r for r in records if r["budget_kind"] == "flops" and math.isclose(r["budget_value"], reference_flops)]


def fit_surrogate(data: Mapping[str, Any], noise: NoiseSplit | None = None) -> Surrogate:
    """Fit to ``data``; the noise split is estimated from the shipped split measurements unless given."""
    header, records = data["header"], list(data["measurements"])
    reference_flops = float(header["default_flops_budget"])
    reference = _at_reference_budget(records, reference_flops)
    learnable = [r for r in reference if r["failure_class"] in ("ok", "diverged")]
    ok = [r for r in learnable if r["failure_class"] == "ok"]
    x_ok = np.array([config_features(validate_config(r["config"], preset=PRESET)) for r in ok])
    bpb = BpbModel.fit(x_ok, np.array([r["val_bpb"] for r in ok]))

    x_all = np.array([config_features(validate_config(r["config"], preset=PRESET)) for r in learnable])
    diverged = np.array([r["failure_class"] == "diverged" for r in learnable])
    divergence = DivergenceModel.fit(x_all, diverged) if diverged.any() else None

    if noise is None:
        noise = estimate_split(split_table(load_split_records(default_replicates(data))))

    # Budget slope: each off-budget ok run against the mean of its config's runs at the reference budget.
    pairs = []
    for record in records:
        if record["failure_class"] != "ok" or math.isclose(record["budget_value"], reference_flops):
            continue
        same = [r["val_bpb"] for r in ok if r["config"] == record["config"]]
        if same:
            pairs.append((math.log(record["budget_value"] / reference_flops), record["val_bpb"] - float(np.mean(same))))
    log_ratio = np.array([p[0] for p in pairs])
    budget_slope = float((log_ratio @ np.array([p[1] for p in pairs])) / (log_ratio @ log_ratio)) if pairs else 0.0

    timed = [r for r in records if r["failure_class"] == "ok" and r["steps"] > 0]
    step_flops = np.array([flops_per_step(validate_config(r["config"], preset=PRESET), PRESET) for r in timed])
    step_seconds = np.array([r["training_seconds"] / r["steps"] for r in timed])
    slope, intercept = np.polyfit(step_flops, step_seconds, 1)
    return Surrogate(
        bpb=bpb,
        divergence=divergence,
        noise=noise,
        reference_flops=reference_flops,
        budget_slope=budget_slope,
        seconds_per_step=(max(float(intercept), 0.0), max(float(slope), 1e-15)),
        eval_seconds=float(np.median([r["eval_seconds"] for r in timed])),
        startup_seconds=2.0,
        measurement_count=len(records),
        corpus=str(header["corpus"]),
    )


def default_replicates(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The default config's ok runs at the reference budget (one per seed): a row of the noise-split table."""
    header = data["header"]
    reference = _at_reference_budget(list(data["measurements"]), float(header["default_flops_budget"]))
    return [r for r in reference if r["failure_class"] == "ok" and r["config"] == header["default_config"]]


@functools.lru_cache(maxsize=1)
def default_surrogate() -> Surrogate:
    return fit_surrogate(load_measurements())


def parameter_count(config: Mapping[str, Any]) -> int:
    """Parameters of the real model for ``config`` (embedding, blocks, norm gains, head)."""
    width, depth = model_width(config), int(config["DEPTH"])
    norms = (2 * depth + 2) * width
    return VOCAB_SIZE * width + depth * 12 * width * width + norms + width * VOCAB_SIZE


def surrogate_evaluate(
    config: Mapping[str, Any],
    *,
    budget_kind: str,
    budget_value: float,
    seed: int,
    surrogate: Surrogate | None = None,
) -> TrainingSummary:
    """A simulated training run of ``config`` on cpu-tiny: same fields as the real trainer's summary."""
    started = time.perf_counter()
    common: dict[str, Any] = {
        "objective": "surrogate",
        "preset": PRESET,
        "budget_kind": budget_kind,
        "budget_value": budget_value,
        "seed": seed,
        "threads": 1,
        "device": "surrogate",
    }
    try:
        typed = validate_config(config, preset=PRESET)
        planned = check_budget(typed, PRESET, budget_kind, budget_value)
    except ConfigError as exc:
        return TrainingSummary(failure_class="invalid_config", error=str(exc), **common)
    model = surrogate or default_surrogate()
    common["corpus"] = model.corpus

    step_flops = flops_per_step(typed, PRESET)
    seconds_per_step = model.seconds_per_step[0] + model.seconds_per_step[1] * step_flops
    steps = planned if planned is not None else max(1, math.ceil(budget_value / seconds_per_step))
    flops = steps * step_flops
    features = config_features(typed)[None]
    p_diverge = float(model.divergence.probability(features)[0]) if model.divergence is not None else 0.0
    explained = model.bpb.explain(features)
    mean = float(explained.value[0]) + model.budget_slope * math.log(flops / model.reference_flops)
    generator = config_generator(typed, seed, PRESET)
    noise = model.noise.seed_sd * float(seed_generator(seed).standard_normal()) + model.noise.config_sd * float(
        generator.standard_normal()
    )
    divergence_draw = float(generator.random())
    extra = {
        "config": config_to_json(typed),
        "predicted_mean_val_bpb": mean,
        "noise_sd": model.noise_sd,
        "seed_noise_sd": model.noise.seed_sd,
        "config_noise_sd": model.noise.config_sd,
        "divergence_probability": p_diverge,
        # Where the model knows: outside the measured support the value is a pessimistic guess.
        "extrapolated": bool(explained.extrapolated[0]),
        "support_distance": float(explained.support_distance[0]),
        "nearest_measured_val_bpb": float(explained.nearest_measured[0]),
        "posterior_sd": float(explained.posterior_sd[0]),
        "flops_per_token": flops_per_token(typed, PRESET),
        "planned_steps": planned,
        "simulated": True,
    }
    tokens_per_step = int(typed["TOTAL_BATCH_SIZE"])
    # Divergence at the edge is a matter of the seed (a measured config diverged for 2 of 3 seeds), so
    # it is drawn with the fitted probability; below DIVERGENCE_FLOOR it is treated as impossible,
    # as the real trainer never diverged away from the extreme-learning-rate corner.
    if p_diverge >= DIVERGENCE_FLOOR and divergence_draw < p_diverge:
        # The real trainer stops within the first few steps of a blow-up.
        stopped = min(steps, 5)
        return TrainingSummary(
            failure_class="diverged",
            error=f"surrogate: predicted divergence (fitted probability {p_diverge:.2f})",
            steps=stopped,
            tokens=stopped * tokens_per_step,
            flops=stopped * step_flops,
            training_seconds=stopped * seconds_per_step,
            wall_seconds=model.startup_seconds + stopped * seconds_per_step,
            params=parameter_count(typed),
            extra=extra | {"surrogate_call_seconds": time.perf_counter() - started},
            **common,
        )
    training_seconds = steps * seconds_per_step
    return TrainingSummary(
        failure_class="ok",
        val_bpb=float(soft_ceiling(mean + noise)),
        steps=steps,
        tokens=steps * tokens_per_step,
        flops=flops,
        training_seconds=training_seconds,
        eval_seconds=model.eval_seconds,
        wall_seconds=model.startup_seconds + training_seconds + model.eval_seconds,
        params=parameter_count(typed),
        extra=extra | {"surrogate_call_seconds": time.perf_counter() - started},
        **common,
    )


def cross_validate(data: Mapping[str, Any], folds: int = FOLDS) -> dict[str, Any]:
    """k-fold held-out quality of the val_bpb and divergence models (hyperparameters too are refit per fold)."""
    header, records = data["header"], list(data["measurements"])
    reference = _at_reference_budget(records, float(header["default_flops_budget"]))
    learnable = [r for r in reference if r["failure_class"] in ("ok", "diverged")]
    x = np.array([config_features(validate_config(r["config"], preset=PRESET)) for r in learnable])
    y = np.array([r["val_bpb"] if r["val_bpb"] is not None else np.nan for r in learnable])
    diverged = np.array([r["failure_class"] == "diverged" for r in learnable])
    predicted = np.full(len(learnable), np.nan)
    predicted_diverged = np.zeros(len(learnable), dtype=bool)
    for held_out in fold_indices(len(learnable), folds):
        train = np.setdiff1d(np.arange(len(learnable)), held_out)
        ok_train = train[~diverged[train]]
        predicted[held_out] = BpbModel.fit(x[ok_train], y[ok_train]).predict(x[held_out])
        if diverged[train].any():
            classifier = DivergenceModel.fit(x[train], diverged[train])
            predicted_diverged[held_out] = classifier.probability(x[held_out]) > 0.5
    ok_mask = ~diverged
    errors = predicted[ok_mask] - y[ok_mask]
    near = ok_mask & (y < np.quantile(y[ok_mask], 0.5))  # the better half: where a search spends its time
    return {
        "folds": folds,
        "ok_runs": int(ok_mask.sum()),
        "diverged_runs": int(diverged.sum()),
        "spearman": spearman(predicted[ok_mask], y[ok_mask]),
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "spearman_better_half": spearman(predicted[near], y[near]),
        "mae_better_half": float(np.abs(predicted[near] - y[near]).mean()),
        "divergence_accuracy": float((predicted_diverged == diverged).mean()),
        "divergence_recall": float(predicted_diverged[diverged].mean()) if diverged.any() else None,
        "divergence_false_alarms": int((predicted_diverged & ~diverged).sum()),
        "target_sd": float(y[ok_mask].std()),
    }


@functools.lru_cache(maxsize=1)
def surrogate_fit_report() -> dict[str, Any]:
    """How well the surrogate predicts held-out real measurements, plus the fitted constants."""
    data = load_measurements()
    model = default_surrogate()
    return {
        "measurements": model.measurement_count,
        "measurement_header": data["header"],
        "cross_validation": cross_validate(data),
        "kernel": {
            "feature_relevance": dict(zip(FEATURE_NAMES, model.bpb.relevance.round(3).tolist(), strict=True)),
            "pessimism_sds": PESSIMISM,
            "support_radius": SUPPORT_RADIUS,
            "noise_ratio": model.bpb.noise,
        },
        "noise_sd": model.noise_sd,
        "noise_split": model.noise.as_dict(),
        "budget_slope_per_ln_flops": model.budget_slope,
        "seconds_per_step": {"intercept": model.seconds_per_step[0], "per_flop": model.seconds_per_step[1]},
        "features": list(FEATURE_NAMES),
    }
