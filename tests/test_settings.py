"""Settings: one validated object; defaults < file < SQLMesh variables < environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sqlmesh_osaa.exceptions import ConfigurationError, ErrorCategory
from sqlmesh_osaa.sections import Invalid, replace
from sqlmesh_osaa.settings import CheckpointSettings, OsaaSettings, RetrySettings, StorageSettings, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_yaml(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_defaults_need_no_file_and_no_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.storage.backend == "local"
    assert settings.retry.max_attempts == 3
    assert settings.environments.prefix_for("prod") == "prod"
    assert settings.environments.prefix_for("dev1") == "dev/dev1"


def test_root_config_yaml_documents_exactly_the_defaults():
    document = yaml.safe_load((REPO_ROOT / "config.yaml").read_text(encoding="utf-8"))
    assert OsaaSettings.from_data(document["osaa"]) == OsaaSettings()
    assert set(document["osaa"]) == set(OsaaSettings.field_names())
    for section in OsaaSettings.field_names():
        assert set(document["osaa"][section]) == set(type(getattr(OsaaSettings(), section)).field_names()), section


def test_later_sources_win(tmp_path):
    config = write_yaml(tmp_path / "osaa.yaml", {"osaa": {"retry": {"max_attempts": 4, "initial_delay": 0.5}}})
    settings = load_settings(
        {"osaa": {"retry": {"max_attempts": 5}}},
        config_path=config,
        environ={"OSAA_RETRY__JITTER": "false"},
    )
    assert settings.retry.max_attempts == 5
    assert settings.retry.initial_delay == 0.5
    assert settings.retry.jitter is False


def test_environment_beats_sqlmesh_variables(tmp_path):
    settings = load_settings(
        {"osaa": {"storage": {"backend": "local"}}},
        config_path=write_yaml(tmp_path / "c.yaml", {}),
        environ={"OSAA_STORAGE__BACKEND": "s3"},
    )
    assert settings.storage.backend == "s3"


def test_osaa_config_env_var_names_the_file(tmp_path):
    config = write_yaml(tmp_path / "custom.yaml", {"osaa": {"storage": {"bucket": "osaa-landing"}}})
    settings = load_settings(environ={"OSAA_CONFIG": str(config)})
    assert settings.storage.bucket == "osaa-landing"


def test_sqlmesh_project_config_is_read_from_variables_osaa(tmp_path):
    config = write_yaml(
        tmp_path / "config.yaml",
        {"gateways": {"local": {}}, "variables": {"osaa": {"checkpoint": {"lock_timeout_seconds": 2}}}},
    )
    assert load_settings(config_path=config, environ={}).checkpoint.lock_timeout_seconds == 2


def test_missing_osaa_config_file_is_an_error_naming_the_variable(tmp_path):
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"OSAA_CONFIG": str(tmp_path / "nope.yaml")})
    assert "OSAA_CONFIG" in str(info.value)
    assert "nope.yaml" in str(info.value)


def test_unknown_key_names_key_value_and_source(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {"osaa": {"retry": {"max_atempts": 9}}})
    with pytest.raises(ConfigurationError) as info:
        load_settings(config_path=config, environ={})
    message = str(info.value)
    assert "retry.max_atempts" in message
    assert "9" in message
    assert str(config) in message
    assert info.value.category is ErrorCategory.PERMANENT


def test_bad_value_from_environment_names_the_variable():
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"OSAA_RETRY__MAX_ATTEMPTS": "zero"})
    assert "retry.max_attempts" in str(info.value)
    assert "'zero'" in str(info.value)
    assert "OSAA_RETRY__MAX_ATTEMPTS" in str(info.value)


def test_bad_value_from_sqlmesh_variables_names_that_source():
    with pytest.raises(ConfigurationError) as info:
        load_settings({"osaa": {"storage": {"backend": "gcs"}}}, environ={})
    assert "storage.backend" in str(info.value)
    assert "SQLMesh variables.osaa" in str(info.value)


def test_misspelt_section_variable_is_rejected():
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"OSAA_RETRYS__MAX_ATTEMPTS": "3"})
    assert "retrys" in str(info.value)
    assert "OSAA_RETRYS__MAX_ATTEMPTS" in str(info.value)


def test_variable_with_an_empty_key_is_rejected():
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"OSAA_RETRY__": "3"})
    assert "OSAA_RETRY__" in str(info.value)


def test_unrelated_osaa_variables_without_a_section_are_ignored():
    assert load_settings(environ={"OSAA_PROJECT_DIR": "/srv/osaa"}) == load_settings(environ={})


def test_inside_sqlmesh_the_working_directory_config_is_not_read_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("gateways: {{ env_var('GATEWAYS') }}\n", encoding="utf-8")
    settings = load_settings({"osaa": {"retry": {"max_attempts": 7}}}, environ={})
    assert settings.retry.max_attempts == 7


def test_dev_prefix_must_separate_environments():
    with pytest.raises(ConfigurationError) as info:
        load_settings({"osaa": {"environments": {"dev_prefix": "dev"}}}, environ={})
    assert "environments.dev_prefix" in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("osaa: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigurationError) as info:
        load_settings(config_path=config, environ={})
    assert "broken.yaml" in str(info.value)


def test_environment_strings_become_numbers_booleans_and_paths():
    settings = load_settings(
        environ={
            "OSAA_RETRY__MAX_ATTEMPTS": "7",
            "OSAA_RETRY__INITIAL_DELAY": "0.25",
            "OSAA_RETRY__JITTER": "off",
            "OSAA_CHECKPOINT__DB_PATH": "/srv/osaa/checkpoints.duckdb",
        }
    )
    assert settings.retry == RetrySettings(max_attempts=7, initial_delay=0.25, jitter=False)
    assert settings.checkpoint.db_path == Path("/srv/osaa/checkpoints.duckdb")


def test_a_bound_is_enforced_with_the_setting_and_value_named():
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"OSAA_CHECKPOINT__RETENTION_DAYS": "0"})
    assert "checkpoint.retention_days" in str(info.value)
    assert "greater than or equal to 1" in str(info.value)


def test_a_check_across_fields_names_its_section():
    with pytest.raises(ConfigurationError) as info:
        load_settings({"osaa": {"checkpoint": {"backend": "postgres"}}}, environ={})
    assert "checkpoint" in str(info.value)
    assert "needs checkpoint.dsn" in str(info.value)


def test_sections_built_or_copied_in_code_are_checked_and_coerced():
    assert StorageSettings(root="objects").root == Path("objects")
    with pytest.raises(Invalid) as info:
        replace(CheckpointSettings(), lock_timeout_seconds=-1)
    assert info.value.location == ("lock_timeout_seconds",)


def test_settings_are_hashable_and_equal_by_value():
    assert hash(load_settings(environ={})) == hash(OsaaSettings())
    assert load_settings(environ={"OSAA_STORAGE__BUCKET": "lake"}).storage == StorageSettings(bucket="lake")
