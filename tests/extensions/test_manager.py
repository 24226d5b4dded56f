"""PluginHost (hook calls, order, error isolation) and ExtensionManager (discovery, loading, failures)."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdweb.config import OptionSpec, OptionsStore
from sdweb.extensions import manager as manager_module
from sdweb.extensions.manager import ExtensionManager, PluginHost, module_name_for
from sdweb.params import GenerationParams, StepProgress
from sdweb.plugin_api import API_VERSION, SamplerSpec, ScheduleSpec, UITab, hookimpl

Writer = Callable[..., Path]
ManagerFactory = Callable[..., ExtensionManager]


def plugin(**hooks: Callable[..., Any]) -> types.SimpleNamespace:
    """A plugin object whose attributes are the given functions marked as hook implementations."""
    return types.SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


def fake_sampler(denoise: Any, x: Any, sigmas: Any, *, generator: Any = None, callback: Any = None) -> Any:
    return x


# ---------------------------------------------------------------------------------------------
# PluginHost: order
# ---------------------------------------------------------------------------------------------


def test_hooks_are_called_in_registration_order_builtins_first() -> None:
    host = PluginHost()
    calls: list[str] = []
    for name in ("builtin", "ext-a", "ext-b", "ext-c"):
        def extra_infotext(params: Any, _name: str = name) -> dict[str, str]:
            calls.append(_name)
            return {_name: "1"}
        if name == "builtin":
            host.register_builtin(plugin(extra_infotext=extra_infotext), name)
        else:
            host.register(plugin(extra_infotext=extra_infotext), name)

    results = host.collect("extra_infotext", params=GenerationParams())

    # pluggy alone would call ext-c first (LIFO); users see the order they loaded things in.
    assert calls == ["builtin", "ext-a", "ext-b", "ext-c"]
    assert [name for name, _ in results] == ["builtin", "ext-a", "ext-b", "ext-c"]


def test_tryfirst_and_trylast_move_an_implementation_to_either_end() -> None:
    host = PluginHost()
    order: list[str] = []
    host.register(types.SimpleNamespace(
        on_step=hookimpl(trylast=True)(lambda progress: order.append("last"))), "late")
    host.register(plugin(on_step=lambda progress: order.append("plain")), "plain")
    host.register(types.SimpleNamespace(
        on_step=hookimpl(tryfirst=True)(lambda progress: order.append("first"))), "early")

    host.notify("on_step", progress=StepProgress(step=1, total_steps=2, batch_index=0, batch_count=1))

    assert order == ["first", "plain", "last"]


def test_a_plugin_name_cannot_be_registered_twice() -> None:
    host = PluginHost()
    host.register_builtin(plugin(on_step=lambda progress: None), "samplers")
    with pytest.raises(ValueError, match="already registered"):
        host.register(plugin(on_step=lambda progress: None), "samplers")


def test_an_implementation_with_wrong_arguments_is_refused_naming_the_extension() -> None:
    host = PluginHost()
    with pytest.raises(ValueError, match="bad-args"):
        host.register(plugin(before_generate=lambda params, unknown_argument: None), "bad-args")


# ---------------------------------------------------------------------------------------------
# PluginHost: failures are isolated and recorded by name
# ---------------------------------------------------------------------------------------------


def test_a_raising_hook_is_logged_by_name_recorded_and_the_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    host = PluginHost()

    def broken() -> list[Any]:
        raise RuntimeError("boom in samplers")

    host.register_builtin(plugin(register_samplers=lambda: [SamplerSpec("Euler", sample_fn=fake_sampler)]),
                          "builtin")
    host.register(plugin(register_samplers=broken), "broken-ext")
    host.register(plugin(register_samplers=lambda: [SamplerSpec("Mine", sample_fn=fake_sampler)]), "good-ext")

    with caplog.at_level(logging.ERROR):
        results = host.collect("register_samplers")

    assert [(name, [spec.name for spec in specs]) for name, specs in results] == [
        ("builtin", ["Euler"]), ("good-ext", ["Mine"])]
    error = host.last_error("broken-ext")
    assert error is not None and error.hook == "register_samplers" and "boom in samplers" in error.message
    assert host.last_error("good-ext") is None
    assert any("broken-ext" in record.getMessage() and "register_samplers" in record.getMessage()
               for record in caplog.records)


def test_a_register_hook_that_returns_a_single_spec_instead_of_a_list_is_reported() -> None:
    host = PluginHost()
    host.register(plugin(register_schedules=lambda: ScheduleSpec("Karras")), "no-list")
    host.register(plugin(register_schedules=lambda: (ScheduleSpec("Exponential"),)), "tuple-ok")

    results = host.collect("register_schedules")

    assert [(name, [spec.name for spec in specs]) for name, specs in results] == [
        ("tuple-ok", ["Exponential"])]
    error = host.last_error("no-list")
    assert error is not None and "must return a list" in error.message


def test_on_step_failures_do_not_stop_the_generation_and_repeats_are_counted() -> None:
    host = PluginHost()
    seen: list[int] = []

    def failing(progress: StepProgress) -> None:
        raise ValueError("cannot draw preview")

    host.register(plugin(on_step=failing), "flaky")
    host.register(plugin(on_step=lambda progress: seen.append(progress.step)), "counter")

    for step in range(1, 4):
        host.notify("on_step", progress=StepProgress(step=step, total_steps=3, batch_index=0, batch_count=1))

    assert seen == [1, 2, 3]
    error = host.last_error("flaky")
    assert error is not None and error.count == 3 and "cannot draw preview" in str(error)


def test_an_implementation_of_a_hook_that_does_not_exist_is_warned_about_by_name(
        caplog: pytest.LogCaptureFixture) -> None:
    host = PluginHost()
    with caplog.at_level(logging.WARNING):
        host.register(plugin(on_stpe=lambda progress: None), "typo-ext")

    assert any("typo-ext" in r.getMessage() and "'on_stpe'" in r.getMessage() and "on_step" in r.getMessage()
               for r in caplog.records)


def test_unknown_hooks_and_wrong_arguments_are_programming_errors() -> None:
    host = PluginHost()
    with pytest.raises(ValueError, match="unknown hook 'on_stepp'"):
        host.collect("on_stepp")
    with pytest.raises(TypeError, match="progress"):
        host.notify("on_step", step=1)


def test_an_implementation_may_take_fewer_arguments_than_the_spec() -> None:
    host = PluginHost()
    host.register(plugin(on_app_started=lambda services: services.append("started")), "partial")
    services: list[str] = []

    host.notify("on_app_started", app=object(), services=services)

    assert services == ["started"]


# ---------------------------------------------------------------------------------------------
# before_generate chain
# ---------------------------------------------------------------------------------------------


def test_before_generate_chains_each_result_into_the_next_and_skips_failures() -> None:
    host = PluginHost()
    host.register(plugin(before_generate=lambda params: params.model_copy(update={"steps": 30})),
                  "more-steps")
    host.register(plugin(before_generate=lambda params: 1 / 0), "divides")
    host.register(plugin(before_generate=lambda params: None), "observer")
    host.register(plugin(before_generate=lambda params: {"steps": 99}), "wrong-type")
    host.register(plugin(before_generate=lambda params: params.model_copy(
        update={"prompt": params.prompt + f", {params.steps} steps"})), "sees-previous")

    result = host.chain("before_generate", GenerationParams(prompt="a cat", steps=20))

    assert result.steps == 30
    assert result.prompt == "a cat, 30 steps"
    assert "ZeroDivisionError" in str(host.last_error("divides"))
    assert "must return a GenerationParams" in str(host.last_error("wrong-type"))
    assert host.last_error("observer") is None


# ---------------------------------------------------------------------------------------------
# One test per hook: each reaches the app through the host with its spec's arguments
# ---------------------------------------------------------------------------------------------


def test_hook_register_samplers_and_register_schedules_results_name_their_plugin() -> None:
    host = PluginHost()
    host.register(plugin(register_samplers=lambda: [SamplerSpec("Euler (x)", sample_fn=fake_sampler)],
                         register_schedules=lambda: [ScheduleSpec("Linear (x)")]), "sampling-pack")

    assert [(name, specs[0].name) for name, specs in host.collect("register_samplers")] == [
        ("sampling-pack", "Euler (x)")]
    assert [(name, specs[0].name) for name, specs in host.collect("register_schedules")] == [
        ("sampling-pack", "Linear (x)")]


def test_hook_register_settings_adds_options_to_the_store(tmp_path: Path) -> None:
    host = PluginHost()
    host.register(plugin(register_settings=lambda: [
        OptionSpec("myext_strength", 0.5, "Strength", "My extension", minimum=0.0, maximum=1.0)]), "myext")
    store = OptionsStore(tmp_path / "config.json")

    for _name, specs in host.collect("register_settings"):
        for spec in specs:
            store.add_spec(spec)

    assert store.get("myext_strength") == 0.5
    with pytest.raises(ValueError, match="myext_strength"):
        store.update({"myext_strength": 2.0})


def test_hook_extra_infotext_pairs_from_every_extension() -> None:
    host = PluginHost()
    host.register(plugin(extra_infotext=lambda params: {"Tag A": params.seed}), "a")
    host.register(plugin(extra_infotext=lambda params: None), "b")

    assert host.collect("extra_infotext", params=GenerationParams(seed=42)) == [("a", {"Tag A": 42})]


def test_hook_after_image_saved_receives_path_params_and_infotext() -> None:
    host = PluginHost()
    received: list[tuple[str, int, str]] = []
    host.register(plugin(after_image_saved=lambda path, params, infotext: received.append(
        (path, params.seed, infotext))), "watcher")

    host.notify("after_image_saved", path="/out/00001-7.png", params=GenerationParams(seed=7),
                infotext="a cat\nSteps: 20")

    assert received == [("/out/00001-7.png", 7, "a cat\nSteps: 20")]


def test_hook_register_ui_tabs_and_register_api_routes_get_the_services() -> None:
    host = PluginHost()
    services = types.SimpleNamespace(name="services")
    host.register(plugin(
        register_ui_tabs=lambda services: [UITab(title=f"Tab for {services.name}", render=lambda: None)],
        register_api_routes=lambda services: [f"router for {services.name}"]), "ui-ext")

    tabs = host.collect("register_ui_tabs", services=services)
    routes = host.collect("register_api_routes", services=services)

    assert tabs[0][0] == "ui-ext" and tabs[0][1][0].title == "Tab for services"
    assert routes == [("ui-ext", ["router for services"])]


def test_hook_on_app_started_and_on_model_loaded_are_notified() -> None:
    host = PluginHost()
    events: list[str] = []
    host.register(plugin(on_app_started=lambda app, services: events.append(f"started {app}"),
                         on_model_loaded=lambda model_info: events.append(f"loaded {model_info}")), "events")

    host.notify("on_app_started", app="app", services=None)
    host.notify("on_model_loaded", model_info="v1-5 [6ce0161689]")

    assert events == ["started app", "loaded v1-5 [6ce0161689]"]


# ---------------------------------------------------------------------------------------------
# Conflicting sampler names name both extensions
# ---------------------------------------------------------------------------------------------


class SamplerRegistryStandIn:
    """The contract the real SamplerRegistry.from_plugin_results follows: duplicates name both plugins."""

    @staticmethod
    def from_plugin_results(samplers: list[tuple[str, list[SamplerSpec]]]) -> dict[str, str]:
        owners: dict[str, str] = {}
        for plugin_name, specs in samplers:
            for spec in specs:
                for key in (spec.name, *spec.aliases):
                    if key.lower() in owners:
                        raise ValueError(f"sampler {key!r} is registered by both {owners[key.lower()]!r} "
                                         f"and {plugin_name!r}")
                    owners[key.lower()] = plugin_name
        return owners


def two_extensions_with_one_sampler_name() -> PluginHost:
    host = PluginHost()
    host.register(plugin(register_samplers=lambda: [SamplerSpec("Euler Z", sample_fn=fake_sampler)]),
                  "first-pack")
    host.register(plugin(register_samplers=lambda: [SamplerSpec("Euler Z", sample_fn=fake_sampler)]),
                  "second-pack")
    return host


def test_conflicting_sampler_names_keep_both_plugin_names_for_the_error() -> None:
    results = two_extensions_with_one_sampler_name().collect("register_samplers")

    with pytest.raises(ValueError, match="first-pack.*second-pack"):
        SamplerRegistryStandIn.from_plugin_results(results)


def test_conflicting_sampler_names_are_refused_by_the_real_registry() -> None:
    registry_module = pytest.importorskip("sdweb.engine.samplers.registry")
    host = two_extensions_with_one_sampler_name()

    with pytest.raises(Exception, match="first-pack") as caught:
        registry_module.SamplerRegistry.from_plugin_results(
            host.collect("register_samplers"), host.collect("register_schedules"))
    assert "second-pack" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# ExtensionManager: loading folders
# ---------------------------------------------------------------------------------------------


def test_enabled_extensions_load_and_their_load_time_is_logged(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    write_ext(extensions_dir / "hello", code="""
        @hookimpl
        def extra_infotext(params):
            return {"Hello": "world"}
    """)
    manager = make_manager()

    with caplog.at_level(logging.INFO, logger="sdweb.extensions.manager"):
        infos = manager.load_all()

    (info,) = infos
    assert info.name == "hello" and info.loaded and info.load_error is None and info.version == "0.1.0"
    assert info.load_time is not None and info.load_time >= 0
    infotext = manager.host.collect("extra_infotext", params=GenerationParams())
    assert infotext == [("hello", {"Hello": "world"})]
    assert any("hello" in r.getMessage() and "loaded in" in r.getMessage() for r in caplog.records)


def test_an_extension_that_fails_to_import_is_reported_and_the_rest_load(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory) -> None:
    write_ext(extensions_dir / "a-broken", code="import module_that_does_not_exist_anywhere\n")
    write_ext(extensions_dir / "b-raises", code="raise RuntimeError('bad at import time')\n")
    write_ext(extensions_dir / "c-fine", code="@hookimpl\ndef on_step(progress):\n    pass\n")
    manager = make_manager()

    infos = {info.name: info for info in manager.load_all()}

    assert "module_that_does_not_exist_anywhere" in (infos["a-broken"].load_error or "")
    assert "bad at import time" in (infos["b-raises"].load_error or "")
    assert not infos["a-broken"].loaded and not infos["b-raises"].loaded
    assert infos["c-fine"].loaded and manager.host.plugin_names == ["c-fine"]
    # A failed import leaves no half-made module behind.
    assert module_name_for("b-raises") not in sys.modules


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (None, "no extension.toml"),
        ('name = "x"\nversion = "1"\nplugin_api = \n', "not valid TOML"),
        ('version = "1"\nplugin_api = "1"\n', "missing required key 'name'"),
        ('name = "x"\nplugin_api = "1"\n', "missing required key 'version'"),
        ('name = "x"\nversion = "1"\n', "missing required key 'plugin_api'"),
        ('name = "../x"\nversion = "1"\nplugin_api = "1"\n', "not allowed"),
        ('name = "x"\nversion = "1"\nplugin_api = "one"\n', "plugin_api must look like"),
        ('name = "x"\nversion = "1"\nplugin_api = "1"\nrequirements = ["--index-url=http://evil"]\n',
         "must be a package requirement"),
        ('name = "x"\nversion = "1"\nplugin_api = "1"\nmodule = "../elsewhere"\n', "'module' must be one"),
    ],
)
def test_a_missing_or_invalid_manifest_is_reported(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory,
        manifest: str | None, expected: str) -> None:
    folder = write_ext(extensions_dir / "badmanifest")
    if manifest is None:
        (folder / "extension.toml").unlink()
    else:
        (folder / "extension.toml").write_text(manifest, encoding="utf-8")

    (info,) = make_manager().load_all()

    assert not info.loaded
    assert expected in (info.load_error or "")


def test_an_incompatible_plugin_api_version_is_refused_with_both_versions(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory) -> None:
    write_ext(extensions_dir / "from-the-future", plugin_api="2",
                    code="raise AssertionError('must not even be imported')\n")
    write_ext(extensions_dir / "current", plugin_api=API_VERSION)

    infos = {info.name: info for info in make_manager().load_all()}

    error = infos["from-the-future"].load_error or ""
    assert "plugin API 2" in error and f"provides plugin API {API_VERSION}" in error
    assert infos["current"].loaded


def test_disabled_extensions_are_listed_but_not_loaded(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory) -> None:
    write_ext(extensions_dir / "on")
    write_ext(extensions_dir / "off", code="raise AssertionError('disabled: must not import')\n")

    manager = make_manager(disabled={"off"})
    infos = {info.name: info for info in manager.load_all()}

    assert infos["on"].loaded and infos["on"].enabled
    assert not infos["off"].loaded and not infos["off"].enabled and infos["off"].load_error is None
    assert manager.set_enabled("off", True) == set()
    assert manager.set_enabled("on", False) == {"on"}
    assert {info.name: info.enabled for info in manager.list()} == {"off": True, "on": False}
    with pytest.raises(KeyError, match="no extension named 'nope'"):
        manager.set_enabled("nope", True)


def test_disable_all_extensions_loads_none_but_builtins_still_work(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory) -> None:
    write_ext(extensions_dir / "any", code="raise AssertionError('must not import')\n")
    manager = make_manager(disable_all=True)
    manager.host.register_builtin(plugin(register_samplers=lambda: []), "builtin-samplers")

    (info,) = manager.load_all()

    assert not info.loaded and not info.enabled
    assert manager.host.plugin_names == ["builtin-samplers"]


def test_module_entry_and_relative_imports_work_and_sys_path_is_restored(
        extensions_dir: Path, make_manager: ManagerFactory) -> None:
    folder = extensions_dir / "packaged"
    folder.mkdir()
    (folder / "extension.toml").write_text(
        'name = "packaged"\nversion = "2.0"\nplugin_api = 1\nmodule = "impl"\n', encoding="utf-8")
    (folder / "impl").mkdir()
    (folder / "impl" / "__init__.py").write_text(
        "from sdweb.plugin_api import hookimpl\nfrom .values import TAG\nimport sibling_helper\n"
        "@hookimpl\ndef extra_infotext(params):\n    return {TAG: sibling_helper.VALUE}\n", encoding="utf-8")
    (folder / "impl" / "values.py").write_text("TAG = 'Packaged'\n", encoding="utf-8")
    (folder / "sibling_helper.py").write_text("VALUE = 'yes'\n", encoding="utf-8")
    before = list(sys.path)

    manager = make_manager()
    (info,) = manager.load_all()

    assert info.loaded, info.load_error
    infotext = manager.host.collect("extra_infotext", params=GenerationParams())
    assert infotext == [("packaged", {"Packaged": "yes"})]
    assert sys.path == before


def test_a_module_entry_naming_a_missing_file_is_reported(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory) -> None:
    folder = write_ext(extensions_dir / "missing-module", extra_manifest='module = "nothere"\n')
    (folder / "__init__.py").unlink()

    (info,) = make_manager().load_all()

    assert "nothere.py, which does not exist" in (info.load_error or "")


def test_similar_names_get_distinct_modules(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory) -> None:
    hook = "@hookimpl\ndef extra_infotext(params):\n    return {{'w': '{}'}}\n"
    write_ext(extensions_dir / "a-b", code=hook.format("dash"))
    write_ext(extensions_dir / "a_b", code=hook.format("under"))

    manager = make_manager()
    manager.load_all()

    assert module_name_for("a-b") != module_name_for("a_b")
    infotext = manager.host.collect("extra_infotext", params=GenerationParams())
    assert sorted(value["w"] for _, value in infotext) == ["dash", "under"]


def test_a_raising_hook_of_a_loaded_extension_shows_in_its_listing(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory) -> None:
    write_ext(extensions_dir / "crashy", code="""
        @hookimpl
        def after_image_saved(path, params, infotext):
            raise OSError("disk full")
    """)
    manager = make_manager()
    manager.load_all()

    manager.host.notify("after_image_saved", path="x.png", params=GenerationParams(), infotext="")

    (info,) = manager.list()
    assert info.loaded and "after_image_saved: OSError: disk full" in (info.hook_error or "")


def test_staging_and_hidden_folders_are_not_extensions(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory) -> None:
    write_ext(extensions_dir / ".tmp" / "install-123" / "checkout")
    write_ext(extensions_dir / ".hidden")
    (extensions_dir / ".gitkeep").write_text("")

    assert make_manager().load_all() == []


# ---------------------------------------------------------------------------------------------
# pip packages (entry point group "sdweb")
# ---------------------------------------------------------------------------------------------


def test_entry_point_plugins_load_and_a_name_clash_with_a_folder_is_reported(
        write_ext: Writer, extensions_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sdweb_pip_plugin_for_tests.py").write_text(
        "from sdweb.plugin_api import hookimpl\nPLUGIN_API = '1'\n"
        "@hookimpl\ndef extra_infotext(params):\n    return {'From pip': 'yes'}\n", encoding="utf-8")
    (site / "sdweb_future_plugin_for_tests.py").write_text("PLUGIN_API = '7.1'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    write_ext(extensions_dir / "clash")
    points = [
        importlib.metadata.EntryPoint("pip-ext", "sdweb_pip_plugin_for_tests", "sdweb"),
        importlib.metadata.EntryPoint("future-ext", "sdweb_future_plugin_for_tests", "sdweb"),
        importlib.metadata.EntryPoint("clash", "sdweb_pip_plugin_for_tests", "sdweb"),
    ]
    monkeypatch.setattr(manager_module.importlib.metadata, "entry_points",
                        lambda group: [ep for ep in points if ep.group == group])

    manager = ExtensionManager(extensions_dir, PluginHost())
    infos = {(info.name, info.source): info for info in manager.load_all()}

    assert infos[("pip-ext", "entry_point")].loaded
    assert "plugin API 7.1" in (infos[("future-ext", "entry_point")].load_error or "")
    assert "already named 'clash'" in (infos[("clash", "entry_point")].load_error or "")
    assert infos[("clash", "folder")].loaded
    infotext = manager.host.collect("extra_infotext", params=GenerationParams())
    assert ("pip-ext", {"From pip": "yes"}) in infotext


def test_the_list_follows_the_folder_after_start(
        write_ext: Writer, extensions_dir: Path, make_manager: ManagerFactory) -> None:
    write_ext(extensions_dir / "was-here")
    manager = make_manager()
    manager.load_all()
    write_ext(extensions_dir / "new-one", version="3.0")
    (extensions_dir / "was-here" / "__init__.py").unlink()
    (extensions_dir / "was-here" / "extension.toml").unlink()
    (extensions_dir / "was-here").rmdir()

    infos = {info.name: info for info in manager.list()}

    # Installed since the start: listed from its manifest, not running yet.
    assert infos["new-one"].version == "3.0" and not infos["new-one"].loaded and infos["new-one"].enabled
    # Removed since the start: still running until the restart, with no folder.
    assert infos["was-here"].loaded and infos["was-here"].path is None
