from __future__ import annotations

from pathlib import Path

import pytest

from cowest_app import config as cfg


def test_defaults_use_the_embedded_models():
    c = cfg.from_env({})
    assert c.weak_model == "packaged:smollm2-135m-instruct"
    assert c.strong_model == "packaged:qwen2.5-coder-1.5b-instruct"
    assert c.weak_4bit is True and c.strong_backend == "auto"
    assert c.db_path == Path("data") / "cowest.sqlite3"


def test_fast_profile_uses_smollm2_twice_and_explicit_models_win():
    c = cfg.from_env({"COWEST_PROFILE": "fast"})
    assert c.weak_model == c.strong_model == "packaged:smollm2-135m-instruct"
    c = cfg.from_env({"COWEST_PROFILE": "fast", "COWEST_STRONG_MODEL": "Qwen/Qwen2.5-7B-Instruct"})
    assert c.strong_model == "Qwen/Qwen2.5-7B-Instruct"


def test_values_are_parsed():
    c = cfg.from_env({
        "COWEST_WEAK_4BIT": "off", "COWEST_PORT": "8000", "COWEST_TEMPERATURE": "0.7",
        "COWEST_DATA_DIR": "/tmp/x", "COWEST_TORCH_THREADS": "2", "COWEST_MAX_QUESTION_CHARS": " 50 ",
    })
    assert (c.weak_4bit, c.port, c.temperature, c.data_dir, c.torch_threads, c.max_question_chars) == (
        False, 8000, 0.7, Path("/tmp/x"), 2, 50)


@pytest.mark.parametrize("env, message", [
    ({"COWEST_PORT": "eighty"}, "COWEST_PORT='eighty': expected int"),
    ({"COWEST_WEAK_4BIT": "maybe"}, "expected 1/0"),
    ({"COWEST_PROFILE": "huge"}, "COWEST_PROFILE='huge'"),
    ({"COWEST_STRONG_BACKEND": "carrier-pigeon"}, "COWEST_STRONG_BACKEND='carrier-pigeon'"),
    ({"COWEST_MAX_QUESTION_CHARS": "0"}, "max_question_chars must be at least 1"),
    ({"COWEST_TEMPERATURE": "-1"}, "temperature must be >= 0"),
    ({"COWEST_FEEDBACK_PAIRS_PER_QUESTION": "0"}, "feedback_pairs_per_question must be at least 1"),
    ({"COWEST_PORT": "70000"}, "out of range"),
    ({"COWEST_TRAIN_NICE": "20"}, "COWEST_TRAIN_NICE must be in 0..19, got 20"),
])
def test_bad_values_are_clear_errors(env, message):
    with pytest.raises(cfg.ConfigError, match=message.replace("(", r"\(")):
        cfg.from_env(env)


def test_secrets_never_show_in_repr():
    c = cfg.from_env({"HF_TOKEN": "hf_supersecret", "COWEST_ADMIN_SECRET": "letmein"})
    assert c.secrets.hf_token == "hf_supersecret"
    assert c.secrets.strong_api_token == "hf_supersecret"  # falls back to HF_TOKEN
    for text in (repr(c), str(c), repr(c.secrets)):
        assert "hf_supersecret" not in text and "letmein" not in text


def test_readme_configuration_table_matches_code():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert cfg.env_table() in readme


def test_space_binds_all_interfaces_unless_told_otherwise():
    assert cfg.from_env({"SPACE_ID": "me/cowest"}).host == "0.0.0.0"
    assert cfg.from_env({"SPACE_ID": "me/cowest", "COWEST_HOST": "127.0.0.1"}).host == "127.0.0.1"
    # The session-share cap guards a public Space; locally a single user must still be able to train.
    assert cfg.from_env({}).max_session_share == 1.0
    assert cfg.from_env({"SPACE_ID": "me/cowest"}).max_session_share == 0.2
    assert cfg.from_env({"SPACE_ID": "me/cowest", "COWEST_MAX_SESSION_SHARE": "0.5"}).max_session_share == 0.5
    assert cfg.from_env({}).host == "127.0.0.1"


def test_env_setting_reads_one_setting_as_from_env_does(tmp_path: Path) -> None:
    assert cfg.env_setting("COWEST_DATA_DIR", {}) == cfg.AppConfig.data_dir == Path("data")
    assert cfg.env_setting("COWEST_DATA_DIR", {"COWEST_DATA_DIR": " "}) == Path("data")  # blank: the default
    assert cfg.env_setting("COWEST_CACHE_DIR", {"COWEST_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert cfg.env_setting("COWEST_CACHE_DIR", {"COWEST_CACHE_DIR": "~/c"}) == Path.home() / "c"
    assert cfg.env_setting("COWEST_CACHE_DIR", {}) == cfg.from_env({}).cache_dir


def test_a_space_with_persistent_storage_keeps_its_data_there(tmp_path):
    storage = tmp_path / "data"
    assert cfg.from_env({"SPACE_ID": "me/cowest"}, space_storage=storage).data_dir == Path("data")  # none mounted
    storage.mkdir()
    on_space = cfg.from_env({"SPACE_ID": "me/cowest"}, space_storage=storage)
    assert (on_space.data_dir, on_space.cache_dir) == (storage / "cowest", storage / "cowest-cache")
    assert cfg.from_env({"SPACE_ID": "me/cowest", "COWEST_DATA_DIR": "/elsewhere"}, space_storage=storage).data_dir == Path("/elsewhere")
    assert cfg.from_env({}, space_storage=storage).data_dir == Path("data")  # a local run ignores it


def test_hf_jobs_backend_needs_its_repos_image_and_token():
    with pytest.raises(cfg.ConfigError, match="COWEST_TRAIN_BACKEND='cloud'"):
        cfg.from_env({"COWEST_TRAIN_BACKEND": "cloud"})
    with pytest.raises(cfg.ConfigError) as missing:
        cfg.from_env({"COWEST_TRAIN_BACKEND": "hf-jobs", "COWEST_HUB_REPO": "me/adapter"})
    text = str(missing.value)
    assert "COWEST_HUB_LOG_REPO" in text and "COWEST_JOB_IMAGE" in text and "HF_TOKEN" in text
    assert "COWEST_HUB_REPO" not in text.replace("COWEST_HUB_REPO (", "")  # only what is missing is named
    full = {"COWEST_TRAIN_BACKEND": "hf-jobs", "COWEST_HUB_REPO": "me/adapter", "COWEST_HUB_LOG_REPO": "me/log",
            "HF_TOKEN": "hf_job_token", "COWEST_JOB_PROCESSES": "4", "COWEST_JOB_TIMEOUT_MINUTES": "30"}
    on_space = cfg.from_env({**full, "SPACE_ID": "me/cowest"})
    assert (on_space.train_backend, on_space.job_image, on_space.job_flavor) == ("hf-jobs", "hf.co/spaces/me/cowest", "a10g-small")
    assert (on_space.job_processes, on_space.job_timeout_minutes) == (4, 30.0)
    assert "hf_job_token" not in repr(on_space)
    with pytest.raises(cfg.ConfigError, match="COWEST_JOB_PROCESSES must be at least 1, got 0"):
        cfg.from_env({**full, "COWEST_JOB_IMAGE": "img", "COWEST_JOB_PROCESSES": "0"})
    assert cfg.from_env({}).train_backend == "local"
