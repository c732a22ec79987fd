"""The app's one configuration object, built once from environment variables.

Every setting is documented in the README table; `ENV_VARS` below is the
source of that table and a test keeps the two in step. Secrets live in their
own object, are read here and only here, and never appear in a repr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

from cowest_app.defaults import MIN_MARGIN

WEAK_DEFAULT = "packaged:smollm2-135m-instruct"
STRONG_DEFAULT = "packaged:qwen2.5-coder-1.5b-instruct"

# profile -> (weak model, strong model)
PROFILES: dict[str, tuple[str, str]] = {
    "default": (WEAK_DEFAULT, STRONG_DEFAULT),
    # SmolLM2 in both roles: for tests and slow machines.
    "fast": (WEAK_DEFAULT, WEAK_DEFAULT),
}

STRONG_BACKENDS = ("auto", "llama-cpp", "transformers", "inference-client")
WEAK_BACKENDS = ("transformers", "lora-server")
WEAK_ENGINES = ("vllm", "tgi")
STRONG_DTYPES = ("auto", "float32", "bfloat16", "float16")
STRONG_ASSIST_MODES = ("auto", "off", "weak", "prompt-lookup")
FEEDBACK_EVALUATORS = ("weak_judge", "strong_judge", "weak_teacher")
TRAIN_BACKENDS = ("local", "hf-jobs")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Secrets:
    strong_api_token: str | None = field(default=None, repr=False)
    weak_api_token: str | None = field(default=None, repr=False)
    hf_token: str | None = field(default=None, repr=False)
    admin_secret: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never print a secret, even by accident
        present = [f.name for f in fields(self) if getattr(self, f.name)]
        return f"Secrets(set={present})"


# The packs the app serves, the first selected by default: the shipped pack with its trained
# adapter, then the general and preset domains.
DEFAULT_PACKS = ("packs/saltmarsh-formulary", "packs/general", "packs/medicine", "packs/ethics", "packs/counterfactual")


@dataclass(frozen=True)
class AppConfig:
    profile: str = "default"
    packs: tuple[str, ...] = DEFAULT_PACKS
    train_pack: str | None = None  # the pack whose adapter the scheduled job trains; None: the first served
    weak_model: str = WEAK_DEFAULT
    weak_adapter: str | None = None
    weak_4bit: bool = True
    weak_backend: str = "transformers"
    weak_base_url: str | None = None
    weak_engine: str = "vllm"
    strong_backend: str = "auto"
    strong_model: str = STRONG_DEFAULT
    strong_base_url: str | None = None
    strong_timeout_s: float = 120.0
    strong_dtype: str = "auto"
    strong_assist: str = "auto"
    data_dir: Path = Path("data")
    cache_dir: Path = Path.home() / ".cache" / "cowest"
    max_question_chars: int = 2000
    max_comment_chars: int = 2000
    asks_per_minute: int = 12
    feedback_per_minute: int = 30
    global_asks_per_minute: int = 0  # across all sessions; 60 by default on a Space (see from_env)
    global_feedback_per_minute: int = 0  # across all sessions; 240 by default on a Space
    weak_max_new_tokens: int = 192
    strong_max_new_tokens: int = 256
    temperature: float = 0.0
    torch_threads: int | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 1
    queue_max_size: int = 64
    # -- self-improvement loop (feedback -> pairs -> DPO -> gate -> swap -> push)
    train_every_minutes: float = 60.0
    train_min_pairs: int = 32
    feedback_k: int = 4
    # The labeller study's best cheap labeller on the shipped pack (README, "How good are the labels?").
    feedback_evaluator: str = "weak_teacher"
    feedback_min_margin: float = MIN_MARGIN
    feedback_pairs_per_question: int = 1
    feedback_min_confidence: float = 0.6
    min_evaluator_agreement: float = 60.0  # %: labels from an evaluator measured below this are not trained on
    max_session_share: float = 1.0  # 0.2 on a Space: see from_env
    feedback_file: Path | None = None
    collect_max_questions: int = 16
    eval_file: Path | None = None
    eval_max_items: int = 16
    eval_tolerance: float = 0.0
    train_recipe: Path = Path("training/recipes/dpo.yaml")
    train_threads: int = 1
    train_nice: int = 19  # the training child yields the CPU to answering (bench/serving.py)
    train_backend: str = "local"  # "hf-jobs": each DPO run is a Hugging Face Job (cowest_app/hub/jobs.py)
    job_image: str | None = None  # on a Space: the Space's own image (see from_env)
    job_flavor: str = "a10g-small"
    job_processes: int = 1
    job_timeout_minutes: float = 120.0
    hub_repo: str | None = None
    hub_public: bool = False  # the adapter repo is created private unless this is set
    hub_log_repo: str | None = None
    hub_endpoint: str | None = None
    secrets: Secrets = field(default_factory=Secrets)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "cowest.sqlite3"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    def pack_adapters_dir(self, pack_name: str) -> Path:
        """Each pack has its own adapter lineage (v1, v2, ...) under data/adapters/<pack name>/."""
        return self.adapters_dir / pack_name

    def with_overrides(self, **changes) -> "AppConfig":
        return replace(self, **changes)


# env var -> (AppConfig field, description); the README table is built from this.
ENV_VARS: dict[str, tuple[str, str]] = {
    "COWEST_PROFILE": ("profile", "`default` (SmolLM2-135M weak, Qwen2.5-Coder-1.5B strong) or `fast` (SmolLM2 in both roles)"),
    "COWEST_PACKS": ("packs", "comma-separated domain pack directories the app serves; the first is selected by default, and each brings its prompts, example questions and adapter lineage"),
    "COWEST_TRAIN_PACK": ("train_pack", "name of the pack whose adapter the scheduled job trains (unset = the first served pack)"),
    "COWEST_WEAK_MODEL": ("weak_model", "weak model: Hub repo id, local directory or `packaged:NAME`; overrides the profile"),
    "COWEST_WEAK_ADAPTER": ("weak_adapter", "LoRA adapter for the first pack's weak drafts instead of its registry's active version: local directory or Hub repo id"),
    "COWEST_WEAK_4BIT": ("weak_4bit", "load the weak model in 4-bit NF4 with bitsandbytes (`1`/`0`)"),
    "COWEST_WEAK_BACKEND": ("weak_backend", "`transformers` (in this process) or `lora-server` (an OpenAI-compatible server that serves each pack's LoRA adapter per request: vLLM or TGI)"),
    "COWEST_WEAK_BASE_URL": ("weak_base_url", "URL of the weak model's server for `lora-server`, e.g. `http://vllm:8000/v1`; `COWEST_WEAK_MODEL` is the base model's name there"),
    "COWEST_WEAK_ENGINE": ("weak_engine", "`vllm` (adapters loaded at run time, `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) or `tgi` (adapters given at launch in `LORA_ADAPTERS` as `<pack>-<version>`)"),
    "COWEST_STRONG_BACKEND": ("strong_backend", "`auto` (`llama-cpp` on a CPU when llama-cpp-python is installed and the strong model is a GGUF, else `transformers`), `llama-cpp` (the GGUF file read by llama.cpp), `transformers` (local weights) or `inference-client` (black-box chat endpoint)"),
    "COWEST_STRONG_MODEL": ("strong_model", "strong model: repo id / directory / `packaged:NAME`, or the model name sent to the endpoint"),
    "COWEST_STRONG_BASE_URL": ("strong_base_url", "endpoint URL for `inference-client` (TGI, vLLM, any OpenAI-compatible server, or Inference Providers)"),
    "COWEST_STRONG_TIMEOUT_S": ("strong_timeout_s", "request timeout for the remote strong model, seconds"),
    "COWEST_STRONG_DTYPE": ("strong_dtype", "weights of the local strong model: `auto` (bf16 on GPUs and on CPUs with native bf16, AVX512-BF16 or AMX; fp32 elsewhere), `float32`, `bfloat16` or `float16`"),
    "COWEST_STRONG_ASSIST": ("strong_assist", "assisted (speculative) greedy decoding of the local strong model: `auto` (`prompt-lookup` when the strong model runs in bf16/fp16, `off` in fp32), `off`, `weak` (the weak model proposes tokens) or `prompt-lookup` (n-grams copied from the prompt, which holds the draft); the strong model checks every proposed token (see bench/README.md)"),
    "COWEST_DATA_DIR": ("data_dir", "where the SQLite log, exports and adapters live"),
    "COWEST_CACHE_DIR": ("cache_dir", "where packaged GGUF models are prepared once: converted to safetensors for transformers, joined into one file for llama.cpp"),
    "COWEST_MAX_QUESTION_CHARS": ("max_question_chars", "longest accepted question"),
    "COWEST_MAX_COMMENT_CHARS": ("max_comment_chars", "longest accepted feedback comment"),
    "COWEST_ASKS_PER_MINUTE": ("asks_per_minute", "questions one browser session may ask per minute; more get a \"too fast\" message and are not logged (`0` = no limit)"),
    "COWEST_FEEDBACK_PER_MINUTE": ("feedback_per_minute", "feedback events (votes, choices, comments) one browser session may send per minute; more are refused and not logged (`0` = no limit)"),
    "COWEST_GLOBAL_ASKS_PER_MINUTE": ("global_asks_per_minute", "questions all sessions together may ask per minute, so a script opening a new session per request is still bounded (`0` = no limit; `60` by default on a Space)"),
    "COWEST_GLOBAL_FEEDBACK_PER_MINUTE": ("global_feedback_per_minute", "feedback events all sessions together may send per minute (`0` = no limit; `240` by default on a Space)"),
    "COWEST_WEAK_MAX_NEW_TOKENS": ("weak_max_new_tokens", "token budget of the weak draft"),
    "COWEST_STRONG_MAX_NEW_TOKENS": ("strong_max_new_tokens", "token budget of the strong answer"),
    "COWEST_TEMPERATURE": ("temperature", "sampling temperature for answers (0 = greedy)"),
    "COWEST_TORCH_THREADS": ("torch_threads", "torch CPU threads (unset = torch default)"),
    "COWEST_HOST": ("host", "address the server binds (`0.0.0.0` by default on a Space, where `SPACE_ID` is set)"),
    "COWEST_PORT": ("port", "server port"),
    "COWEST_CONCURRENCY": ("concurrency", "questions answered at once; others wait in the queue"),
    "COWEST_QUEUE_MAX_SIZE": ("queue_max_size", "requests allowed to wait in the queue; beyond that a user gets a clear \"queue is full\" error instead of the server running out of memory"),
    "COWEST_TRAIN_EVERY_MINUTES": ("train_every_minutes", "how often the retraining job runs (`0` = only when an admin starts it)"),
    "COWEST_TRAIN_MIN_PAIRS": ("train_min_pairs", "new trainable preference pairs needed before a scheduled run trains"),
    "COWEST_FEEDBACK_K": ("feedback_k", "weak drafts sampled per question for collaborative feedback"),
    "COWEST_FEEDBACK_EVALUATOR": ("feedback_evaluator", "labels the drafts of questions without a reference: `weak_teacher` (the trained pack's adapter's implicit DPO reward against the bare base; no strong model; the pack needs an adapter), `weak_judge` (the weak model asked zero-shot) or `strong_judge` (the strong model's rubric grade); references and human ratings always win. The default is the best cheap labeller of `training.labeller_study` (README)"),
    "COWEST_FEEDBACK_MIN_MARGIN": ("feedback_min_margin", "smallest influence gap between chosen and rejected draft that makes a pair"),
    "COWEST_FEEDBACK_PAIRS_PER_QUESTION": ("feedback_pairs_per_question", "preference pairs one question's drafts may give: `1` = the most against the least helpful draft; more adds further pairs of drafts whose gains differ by more than the margin, largest gap first"),
    "COWEST_FEEDBACK_MIN_CONFIDENCE": ("feedback_min_confidence", "judge and teacher pairs below this confidence are stored but not trained on"),
    "COWEST_MIN_EVALUATOR_AGREEMENT": ("min_evaluator_agreement", "pairs from an automatic evaluator whose measured agreement with the truth (`<pack>/results/labellers/agreement.json`, written by `training.labeller_study`) is below this percentage are not trained on; a run left with none does not train and says why (`0` = off)"),
    "COWEST_MAX_SESSION_SHARE": ("max_session_share", "largest share of a training set that pairs from one browser session may make up; a session's newest pairs above it are left out (`1` = no cap; `0.2` by default on a Space, where `SPACE_ID` is set)"),
    "COWEST_FEEDBACK_FILE": ("feedback_file", "optional JSONL of questions with references (`question`, `domain`, `reference`, `task_type`, `options`) to collect feedback on"),
    "COWEST_COLLECT_MAX_QUESTIONS": ("collect_max_questions", "questions turned into feedback per job run (bounds a run's time)"),
    "COWEST_EVAL_FILE": ("eval_file", "held-out JSONL (same fields) for the promotion gate; unset = the trained pack's dev split (its last train questions, held out of feedback), up to `COWEST_EVAL_MAX_ITEMS`"),
    "COWEST_EVAL_MAX_ITEMS": ("eval_max_items", "held-out questions scored per candidate"),
    "COWEST_EVAL_TOLERANCE": ("eval_tolerance", "a candidate is promoted when its score >= active score - tolerance"),
    "COWEST_TRAIN_RECIPE": ("train_recipe", "DPO recipe YAML used by the job"),
    "COWEST_TRAIN_THREADS": ("train_threads", "torch threads of the training child process (the app keeps the rest)"),
    "COWEST_TRAIN_NICE": ("train_nice", "niceness of the training child (0-19; 19: it only gets CPU time answering leaves)"),
    "COWEST_TRAIN_BACKEND": ("train_backend", "where the scheduled job trains: `local` (a child process of the app) or `hf-jobs` (a Hugging Face Job that reads the pairs from `COWEST_HUB_LOG_REPO` at a pinned commit and pushes a candidate branch to `COWEST_HUB_REPO`; needs `HF_TOKEN`)"),
    "COWEST_JOB_IMAGE": ("job_image", "Docker image of an `hf-jobs` run; it must hold this project and its requirements (unset = the Space's own image, `hf.co/spaces/$SPACE_ID`, on a Space)"),
    "COWEST_JOB_FLAVOR": ("job_flavor", "hardware of an `hf-jobs` run, e.g. `a10g-small`, `l4x4`, `a100-large`"),
    "COWEST_JOB_PROCESSES": ("job_processes", "training processes in an `hf-jobs` run: `1` runs the recipe in one process; N runs `accelerate launch` data-parallel, one process per GPU (pick an N-GPU flavor)"),
    "COWEST_JOB_TIMEOUT_MINUTES": ("job_timeout_minutes", "an `hf-jobs` run still going after this long is cancelled and the cycle reports it"),
    "COWEST_HUB_REPO": ("hub_repo", "model repo the adapters are pushed to (one commit per version, in the pack's folder, tagged `<pack>-vN`); unset = no push"),
    "COWEST_HUB_PUBLIC": ("hub_public", "create the adapter repo public (`1`); by default it is private"),
    "COWEST_HUB_LOG_REPO": ("hub_log_repo", "dataset repo the feedback log is synced to; unset = no sync"),
    "HF_ENDPOINT": ("hub_endpoint", "Hub API endpoint (unset = huggingface.co)"),
}

# Secrets: env var -> Secrets field. Read here only.
SECRET_VARS: dict[str, tuple[str, str]] = {
    "COWEST_STRONG_API_TOKEN": ("strong_api_token", "token for the strong endpoint (falls back to `HF_TOKEN`)"),
    "COWEST_WEAK_API_TOKEN": ("weak_api_token", "token for the weak model's server (`lora-server`)"),
    "HF_TOKEN": ("hf_token", "Hugging Face token, for private models and adapter pushes"),
    "COWEST_ADMIN_SECRET": ("admin_secret", "secret that unlocks admin actions"),
}


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def _parse(name: str, raw: str, kind: type):
    if kind is bool:
        return _parse_bool(name, raw)
    if kind is tuple:
        items = tuple(part.strip() for part in raw.split(",") if part.strip())
        if not items:
            raise ConfigError(f"{name}={raw!r}: expected a comma-separated list")
        return items
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw).expanduser()
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: expected {kind.__name__}") from exc
    return raw


_FIELD_KINDS: dict[str, type] = {
    "packs": tuple,
    "weak_4bit": bool,
    "hub_public": bool,
    "strong_timeout_s": float,
    "data_dir": Path,
    "cache_dir": Path,
    "max_question_chars": int,
    "train_every_minutes": float,
    "train_min_pairs": int,
    "feedback_k": int,
    "feedback_min_margin": float,
    "feedback_pairs_per_question": int,
    "feedback_min_confidence": float,
    "min_evaluator_agreement": float,
    "max_session_share": float,
    "asks_per_minute": int,
    "feedback_per_minute": int,
    "global_asks_per_minute": int,
    "global_feedback_per_minute": int,
    "feedback_file": Path,
    "collect_max_questions": int,
    "eval_file": Path,
    "eval_max_items": int,
    "eval_tolerance": float,
    "train_recipe": Path,
    "train_threads": int,
    "train_nice": int,
    "job_processes": int,
    "job_timeout_minutes": float,
    "max_comment_chars": int,
    "weak_max_new_tokens": int,
    "strong_max_new_tokens": int,
    "temperature": float,
    "torch_threads": int,
    "port": int,
    "concurrency": int,
    "queue_max_size": int,
}


SPACE_STORAGE = Path("/data")  # where a Space mounts its persistent storage, when it has some


def from_env(env: Mapping[str, str] | None = None, space_storage: Path = SPACE_STORAGE) -> AppConfig:
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for var, (name, _) in ENV_VARS.items():
        raw = env.get(var)
        if raw is not None and raw.strip() != "":
            values[name] = _parse(var, raw.strip(), _FIELD_KINDS.get(name, str))

    profile = str(values.get("profile", "default"))
    if profile not in PROFILES:
        raise ConfigError(f"COWEST_PROFILE={profile!r}: expected one of {sorted(PROFILES)}")
    weak, strong = PROFILES[profile]
    values.setdefault("weak_model", weak)
    values.setdefault("strong_model", strong)
    if env.get("SPACE_ID"):  # on a Hugging Face Space the proxy reaches the container, not loopback
        values.setdefault("host", "0.0.0.0")
        # A public app is where one client can flood the feedback; a local
        # single-user install would never train under a per-session cap.
        values.setdefault("max_session_share", 0.2)
        values.setdefault("global_asks_per_minute", 60)
        values.setdefault("global_feedback_per_minute", 240)
        # The Space's own image holds this project and its requirements: a training job runs it.
        values.setdefault("job_image", f"hf.co/spaces/{env['SPACE_ID']}")
        if space_storage.is_dir() and os.access(space_storage, os.W_OK):
            # Persistent storage survives restarts: the log, adapters and the converted models live there.
            values.setdefault("data_dir", space_storage / "cowest")
            values.setdefault("cache_dir", space_storage / "cowest-cache")

    secrets = {name: env.get(var) or None for var, (name, _) in SECRET_VARS.items()}
    if not secrets["strong_api_token"]:
        secrets["strong_api_token"] = secrets["hf_token"]
    config = AppConfig(**values, secrets=Secrets(**secrets))
    validate(config)
    return config


def env_setting(var: str, env: Mapping[str, str] | None = None) -> object:
    """One setting of ENV_VARS read alone, parsed as from_env parses it, or its default.

    For command-line tools that need a single setting (the log export's data
    dir, the model cache) without validating a whole app config.
    """
    env = os.environ if env is None else env
    name, _ = ENV_VARS[var]
    raw = (env.get(var) or "").strip()
    return _parse(var, raw, _FIELD_KINDS.get(name, str)) if raw else getattr(AppConfig, name)


def validate(config: AppConfig) -> None:
    if config.weak_backend not in WEAK_BACKENDS:
        raise ConfigError(f"COWEST_WEAK_BACKEND={config.weak_backend!r}: expected one of {WEAK_BACKENDS}")
    if config.weak_engine not in WEAK_ENGINES:
        raise ConfigError(f"COWEST_WEAK_ENGINE={config.weak_engine!r}: expected one of {WEAK_ENGINES}")
    if config.weak_backend == "lora-server" and not config.weak_base_url:
        raise ConfigError("COWEST_WEAK_BACKEND=lora-server needs COWEST_WEAK_BASE_URL (the server's URL)")
    if config.strong_backend not in STRONG_BACKENDS:
        raise ConfigError(f"COWEST_STRONG_BACKEND={config.strong_backend!r}: expected one of {STRONG_BACKENDS}")
    if config.strong_backend == "inference-client" and not (config.strong_base_url or config.strong_model):
        raise ConfigError("inference-client needs COWEST_STRONG_BASE_URL or a provider model id in COWEST_STRONG_MODEL")
    for name in ("max_question_chars", "max_comment_chars", "weak_max_new_tokens", "strong_max_new_tokens", "concurrency", "queue_max_size", "feedback_k"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if config.strong_dtype not in STRONG_DTYPES:
        raise ConfigError(f"COWEST_STRONG_DTYPE={config.strong_dtype!r}: expected one of {STRONG_DTYPES}")
    if config.strong_assist not in STRONG_ASSIST_MODES:
        raise ConfigError(f"COWEST_STRONG_ASSIST={config.strong_assist!r}: expected one of {STRONG_ASSIST_MODES}")
    if config.feedback_evaluator not in FEEDBACK_EVALUATORS:
        raise ConfigError(f"COWEST_FEEDBACK_EVALUATOR={config.feedback_evaluator!r}: expected one of {FEEDBACK_EVALUATORS}")
    if config.feedback_k < 2:
        raise ConfigError("feedback_k must be at least 2: a pair needs two drafts")
    for name in ("train_min_pairs", "collect_max_questions", "eval_max_items", "train_threads", "feedback_pairs_per_question"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    _validate_train_backend(config)
    if not 0 <= config.train_nice <= 19:
        raise ConfigError(f"COWEST_TRAIN_NICE must be in 0..19, got {config.train_nice}")
    for name in ("asks_per_minute", "feedback_per_minute", "global_asks_per_minute", "global_feedback_per_minute"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be >= 0 (0 = no limit)")
    if not 0 <= config.min_evaluator_agreement <= 100:
        raise ConfigError(f"COWEST_MIN_EVALUATOR_AGREEMENT must be a percentage in 0..100, got {config.min_evaluator_agreement}")
    if not 0 < config.max_session_share <= 1:
        raise ConfigError(f"max_session_share must be in (0, 1], got {config.max_session_share}")
    if config.train_every_minutes < 0:
        raise ConfigError("train_every_minutes must be >= 0")
    if config.temperature < 0:
        raise ConfigError("temperature must be >= 0")
    if not 0 < config.port < 65536:
        raise ConfigError(f"port {config.port} out of range")


def _validate_train_backend(config: AppConfig) -> None:
    if config.train_backend not in TRAIN_BACKENDS:
        raise ConfigError(f"COWEST_TRAIN_BACKEND={config.train_backend!r}: expected one of {TRAIN_BACKENDS}")
    if config.job_processes < 1:
        raise ConfigError(f"COWEST_JOB_PROCESSES must be at least 1, got {config.job_processes}")
    if config.job_timeout_minutes <= 0:
        raise ConfigError(f"COWEST_JOB_TIMEOUT_MINUTES must be positive, got {config.job_timeout_minutes}")
    if config.train_backend != "hf-jobs":
        return
    needed = {"COWEST_HUB_REPO (the job pushes its candidate there)": config.hub_repo,
              "COWEST_HUB_LOG_REPO (the job reads its pairs from there)": config.hub_log_repo,
              "COWEST_JOB_IMAGE (an image holding this project; set by default on a Space)": config.job_image,
              "HF_TOKEN (to submit the job and for the job to read and push)": config.secrets.hf_token}
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise ConfigError("COWEST_TRAIN_BACKEND=hf-jobs needs " + ", ".join(missing))


def env_table() -> str:
    """Markdown table of every environment variable, for the README."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    defaults = AppConfig()
    for var, (name, text) in ENV_VARS.items():
        default = getattr(defaults, name)
        if name == "cache_dir":
            default = "~/.cache/cowest"
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `{var}` | {shown} | {text} |")
    for var, (_, text) in SECRET_VARS.items():
        rows.append(f"| `{var}` | unset | {text} (secret, never logged) |")
    return "\n".join(rows)
