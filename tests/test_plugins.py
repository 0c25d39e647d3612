"""The plugin layer: built-ins, run-time plugins, entry points, blocking, and the docs."""

from __future__ import annotations

import inspect
import pathlib
import re
import sys
import warnings
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from typing import Any

import numpy as np
import pytest

import gradguard as gg
from gradguard import hookspecs, plugins

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends with a freshly loaded plugin manager."""
    monkeypatch.delenv(plugins.BLOCK_ENV, raising=False)
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def _write_module(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, name: str, code: str
) -> None:
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: EntryPoint) -> None:
    real = plugins.entry_points

    def fake(*, group: str) -> list[EntryPoint]:
        return [*real(group=group), *eps]

    monkeypatch.setattr(plugins, "entry_points", fake)


ARRAY_CLAIMER = """
import gradguard
from gradguard_numpy import NumpyAdapter

class Tagged(NumpyAdapter):
    name = "tagged"

class View:
    pass

@gradguard.hookimpl
def gradguard_adapter_claim(params):
    import numpy as np
    if isinstance(params, np.ndarray) and params.size == 3:
        return Tagged()
    return None
"""


def test_builtins_are_registered_as_plugins() -> None:
    """The NumPy adapter and the JSON-lines reporter are ordinary registered plugins."""
    manager = gg.get_plugin_manager()
    assert manager.has_plugin("numpy")
    assert manager.has_plugin("jsonl-reporter")
    claim = manager.hook.gradguard_adapter_claim.get_hookimpls()
    numpy_impl = next(impl for impl in claim if impl.plugin_name == "numpy")
    assert numpy_impl.trylast


def test_a_plugin_defined_in_a_test_is_used() -> None:
    """A plugin object registered at run time claims its own container type."""

    class Box:
        def __init__(self, w: np.ndarray) -> None:
            self.w = w

    class BoxPlugin:
        @gg.hookimpl
        def gradguard_adapter_claim(self, params: object) -> gg.Adapter | None:
            from gradguard_numpy import NumpyAdapter

            class BoxAdapter(NumpyAdapter):
                def open(self, params, loss, grad):  # type: ignore[no-untyped-def]
                    return super().open(params.w, lambda w: loss(params), lambda w: grad(params))

            return BoxAdapter() if isinstance(params, Box) else None

    gg.register(BoxPlugin(), name="box")
    box = Box(np.array([1.0, 2.0, 3.0]))
    report = gg.check(lambda b: float(np.sum(b.w**2)), box, lambda b: 2 * b.w)
    assert report.passed
    gg.unregister("box")
    with pytest.raises(gg.AdapterNotFoundError, match="numpy"):
        gg.check(lambda b: 0.0, box, None)


def test_a_third_party_adapter_comes_first_over_the_trylast_numpy_adapter(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry-point plugin claiming ndarrays wins over the built-in NumPy adapter."""
    _write_module(tmp_path, monkeypatch, "gg_third_party", ARRAY_CLAIMER)
    _fake_entry_points(
        monkeypatch, EntryPoint(name="third", value="gg_third_party", group="gradguard")
    )
    assert gg.find_adapter(np.ones(3)).name == "tagged"
    assert gg.find_adapter(np.ones(4)).name == "numpy"
    report = gg.check(lambda w: float(np.sum(w**2)), np.ones(3), lambda w: 2 * w)
    assert report.passed


def test_a_broken_plugin_is_named_and_can_be_blocked(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin that fails to import stops gradguard with its name; the env var skips it."""
    _write_module(tmp_path, monkeypatch, "gg_broken", "raise ImportError('no such lib')\n")
    _fake_entry_points(monkeypatch, EntryPoint(name="broken", value="gg_broken", group="gradguard"))
    with pytest.raises(
        gg.PluginLoadError, match=r"'broken'.*no such lib.*GRADGUARD_BLOCK_PLUGINS=broken"
    ):
        gg.check(lambda w: float(np.sum(w)), np.ones(2), np.ones(2))
    monkeypatch.setenv(plugins.BLOCK_ENV, "other, broken")
    plugins.reset_plugin_manager()
    assert gg.check(lambda w: float(np.sum(w)), np.ones(2), np.ones(2)).passed
    assert gg.get_plugin_manager().is_blocked("broken")


def test_a_plugin_with_a_misspelled_hook_is_refused() -> None:
    """An implementation of a hook that does not exist is an error naming the plugin."""

    class Typo:
        @gg.hookimpl
        def gradguard_adapter_clam(self, params: object) -> None:
            return None

    with pytest.raises(gg.PluginLoadError, match="typo"):
        gg.register(Typo(), name="typo")


def test_blocking_a_builtin_adapter_leaves_arrays_unclaimed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GRADGUARD_BLOCK_PLUGINS applies to built-ins too; the error says who was asked."""
    monkeypatch.setenv(plugins.BLOCK_ENV, "numpy")
    with pytest.raises(gg.AdapterNotFoundError, match="adapters asked: ") as caught:
        gg.check(lambda w: 0.0, np.ones(2), np.ones(2))
    asked = str(caught.value).split("adapters asked: ")[1].split(".")[0]
    assert "numpy" not in asked.split(", ")


def test_a_failing_reporter_warns_and_the_others_still_run() -> None:
    """A reporter that raises becomes a warning; the check's result is still returned."""
    seen = []

    class Bad:
        @gg.hookimpl
        def gradguard_check_completed(self, report: gg.CheckReport) -> None:
            raise OSError("disk on fire")

    class Good:
        @gg.hookimpl
        def gradguard_check_completed(
            self, report: gg.CheckReport, context: gg.CheckContext
        ) -> None:
            seen.append((report.passed, context.source))

    gg.register(Bad(), name="bad")
    gg.register(Good(), name="good")
    with pytest.warns(RuntimeWarning, match="'bad' failed: OSError: disk on fire"):
        report = gg.check(lambda w: float(np.sum(w)), np.ones(2), np.ones(2))
    assert report.passed
    assert seen == [(True, "check")]


def test_a_wrapper_hookimpl_wraps_each_reporter_and_sees_its_failure() -> None:
    """A wrapper=True implementation of gradguard_check_completed runs (pluggy's calling
    machinery is used): once around each reporter, seeing the failing one's exception, which
    it may swallow; the other reporters still run and the check returns."""
    seen: list[str] = []

    class Bad:
        @gg.hookimpl
        def gradguard_check_completed(self, report: gg.CheckReport) -> None:
            seen.append("bad")
            raise OSError("disk on fire")

    class Good:
        @gg.hookimpl
        def gradguard_check_completed(self, report: gg.CheckReport) -> None:
            seen.append("good")

    class Wrapper:
        @gg.hookimpl(wrapper=True)
        def gradguard_check_completed(self, report: gg.CheckReport) -> Iterator[None]:
            seen.append("before")
            try:
                return (yield)
            except OSError as exc:
                seen.append(f"caught {exc}")
                return None
            finally:
                seen.append("after")

    gg.register(Bad(), name="bad")
    gg.register(Good(), name="good")
    gg.register(Wrapper(), name="wrapper")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the wrapper handled the failure: nothing to warn about
        report = gg.check(lambda w: float(np.sum(w)), np.ones(2), np.ones(2))
    assert report.passed
    # Last registered first, the built-in jsonl reporter (trylast) last: three wrapped calls.
    assert seen == [
        "before", "good", "after",
        "before", "bad", "caught disk on fire", "after",
        "before", "after",
    ]  # fmt: skip


def test_a_failing_wrapper_warns_naming_the_reporter_it_wrapped() -> None:
    """A wrapper that raises is isolated like a reporter: a warning, and the check returns."""

    class Broken:
        @gg.hookimpl(wrapper=True)
        def gradguard_check_completed(self) -> Iterator[None]:
            yield
            raise RuntimeError("wrapper broke")

    gg.register(Broken(), name="broken")
    with pytest.warns(RuntimeWarning, match=r"'jsonl-reporter' \(or a hook wrapper around it\)"):
        report = gg.check(lambda w: float(np.sum(w)), np.ones(2), np.ones(2))
    assert report.passed


def test_hookcall_monitoring_sees_every_reporter_call() -> None:
    """add_hookcall_monitoring (pluggy's tracing) sees the reporter calls of a check and of a
    lifecycle event, with their keyword arguments."""
    calls: list[tuple[str, list[str], list[str]]] = []
    manager = gg.get_plugin_manager()

    def before(name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
        if name in ("gradguard_check_completed", "gradguard_lifecycle_event"):
            calls.append((name, [impl.plugin_name for impl in impls], sorted(kwargs)))

    def after(outcome: Any, name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
        pass

    undo = manager.add_hookcall_monitoring(before, after)
    try:
        gg.check(lambda w: float(np.sum(w)), np.ones(2), np.ones(2))
        gg.Guard(lambda w: 0.0, np.ones(2), np.ones(2)).disable()
    finally:
        undo()
    assert calls == [
        ("gradguard_check_completed", ["jsonl-reporter"], ["context", "report"]),
        ("gradguard_lifecycle_event", ["jsonl-reporter"], ["context", "details", "event"]),
    ]


def _documented_signatures() -> dict[str, str]:
    text = DOCS.read_text()
    return dict(re.findall(r"^### `(gradguard_\w+)(\(.*?\))`", text, flags=re.MULTILINE))


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    """docs/plugins.md documents each hookspec, with the argument names of the spec."""
    documented = _documented_signatures()
    specs = {
        name: fn
        for name, fn in vars(hookspecs).items()
        if name.startswith("gradguard_") and callable(fn)
    }
    assert set(documented) == set(specs)
    for name, fn in specs.items():
        arguments = ", ".join(inspect.signature(fn).parameters)
        assert documented[name] == f"({arguments})", name
        assert fn.__doc__ and "Args:" in fn.__doc__


def test_every_hook_is_prefixed_and_firstresult_hooks_say_so() -> None:
    """Hook names carry the gradguard_ prefix; a firstresult hook's docs say it is one."""
    text = DOCS.read_text()
    manager = gg.get_plugin_manager()
    for name in _documented_signatures():
        caller = getattr(manager.hook, name)
        section = text.split(f"### `{name}")[1].split("###")[0]
        assert caller.spec.opts.get("firstresult", False) == ("*firstresult*" in section), name


def test_the_adapter_example_in_the_docs_runs() -> None:
    """The complete adapter example in docs/plugins.md works as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    adapter = next(block for block in blocks if "class BoxView" in block)
    usage = next(block for block in blocks if "gg.register(BoxPlugin()" in block)
    namespace = {"__name__": "docs_example"}
    try:
        exec(compile(adapter + usage, str(DOCS), "exec"), namespace)
    finally:
        gg.unregister("box")
