"""The method registry and the hooks shared code asks instead of branching on method names (issue 16)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from privtune import config as C
from privtune import dist
from privtune import methods as M
from privtune.errors import ConfigError
from privtune.methods import bboxer, dpsgd, dpzero, fo, paczero
from privtune.methods.base import BatchCfg, Method, StepCfg, register
from privtune.run.keystore import SecretKey

SRC = Path(__file__).resolve().parents[2] / "src" / "privtune"
NAMES = ["mezo", "paczero", "dpzero", "dpzo", "dpsgd", "bboxer", "fo"]


# ------------------------------------------------------------------------------------------------ the registry
def test_every_method_file_registers_itself_once():
    assert [cls.name for cls in M.method_classes()] == NAMES  # import order; mezo first: the default method
    for name in NAMES:
        cls = M.method_class(name)
        assert issubclass(cls, Method) and cls.name == name
    assert [c.model_fields["name"].default for c in M.config_classes()] == NAMES
    assert M.build_config({}).method.name == "mezo"
    assert M.find("nosuch") is None and M.find(None) is None


def test_register_refuses_a_second_method_of_the_same_name_and_a_name_mismatch():
    class Other(Method):
        name = "mezo"

    with pytest.raises(ValueError, match="already registered"):
        register(M.mezo.Config, Other)
    with pytest.raises(ValueError, match="differs"):
        register(paczero.Config, M.mezo.Mezo)
    register(M.mezo.Config, M.mezo.Mezo)  # registering the same pair again is harmless (a module reload)
    assert M.method_class("mezo") is M.mezo.Mezo


def test_config_module_does_not_import_the_methods():
    """config.py is the schema; the methods import it, never the other way (no circle, not even in a function)."""
    tree = ast.parse((SRC / "config.py").read_text())
    imported = [(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if "methods" in m], imported


def test_config_build_takes_the_method_configs_it_is_given():
    only = C.build({"method": {"name": "bboxer"}}, [bboxer.Config])
    assert only.method.name == "bboxer"
    with pytest.raises(ConfigError, match=r"method: unknown method 'mezo'; known: \['bboxer', 'paczero'\]"):
        C.build({"method": {"name": "mezo"}}, [bboxer.Config, paczero.Config])


def test_no_method_name_branch_outside_methods():
    """Shared code asks a method class (hooks) instead of comparing names: no method name appears as a string
    literal in src/privtune outside methods/ (nor a "paczero-…" mechanism id)."""
    pattern = re.compile(r"""["'](%s)(-\w+)?["']""" % "|".join(NAMES))
    found = []
    for path in SRC.rglob("*.py"):
        if "methods" in path.relative_to(SRC).parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                found.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


# ------------------------------------------------------------------------------------ a method owns its fields
@pytest.mark.parametrize("name, absent", [
    ("bboxer", {"lr", "eps", "weight_decay", "batch_size", "directions", "lr_schedule", "lr_power"}),
    ("dpsgd", {"eps", "directions"}),
    ("paczero", {"batch_size"}),
])
def test_methods_carry_no_fields_they_do_not_use(name, absent):
    cfg_cls = dict(zip(NAMES, M.config_classes()))[name]
    assert not absent & set(cfg_cls.model_fields), absent & set(cfg_cls.model_fields)
    # configs and run dirs written when the schema forced them on the method still load; the keys are dropped
    legacy = {"lr": 1e-6, "eps": 1e-3, "weight_decay": 0.0, "batch_size": 16, "directions": 1,
              "lr_schedule": "constant", "lr_power": 2.0}
    method = M.build_config({"method": {"name": name, **({"epsilon": 2.0} if name == "dpsgd" else {}),
                                        **{k: legacy[k] for k in absent}}}).method
    assert not absent & set(method.model_dump())


def test_fields_that_are_used_are_kept():
    assert {"lr", "weight_decay", "lr_schedule", "batch_size"} <= set(dpsgd.Config.model_fields)
    assert {"lr", "eps", "directions", "weight_decay"} <= set(paczero.Config.model_fields)
    assert issubclass(dpzero.Config, BatchCfg) and issubclass(dpsgd.Config, StepCfg)
    with pytest.raises(ConfigError, match="method.directions: DP-SGD has no ZO directions; leave it at 1"):
        M.build_config({"method": {"name": "dpsgd", "epsilon": 2.0, "directions": 2}})


def test_fo_has_no_zeroth_order_fields():
    """fo is new: it never carried ZO fields, so they are unknown keys, not silently dropped legacy ones."""
    assert not {"eps", "directions"} & set(fo.Config.model_fields)
    assert {"lr", "weight_decay", "lr_schedule", "batch_size", "beta1", "beta2"} <= set(fo.Config.model_fields)
    with pytest.raises(ConfigError, match=r"^method.eps: unknown key$"):
        M.build_config({"method": {"name": "fo", "eps": 1e-3}})
    with pytest.raises(ConfigError, match=r"^method.beta2"):
        M.build_config({"method": {"name": "fo", "beta2": 1.0}})


class _NoLegacy(bboxer.Config):
    unused = ()


def test_a_dropped_key_is_unknown_without_the_legacy_list():
    with pytest.raises(ConfigError, match=r"^method.lr: unknown key$"):
        C.build({"method": {"name": "bboxer", "lr": 1e-3}}, [_NoLegacy])


def test_batch_size_is_checked_once_at_the_edge():
    """batch_size > task.pool_size is a config error when the config is built, before any data is read."""
    for name in ("mezo", "dpzero", "dpzo", "dpsgd", "fo"):
        extra = {"epsilon": 2.0} if name not in ("mezo", "fo") else {}
        with pytest.raises(ConfigError, match=r"^method.batch_size: 65 is larger than task.pool_size 64$"):
            M.build_config({"task": {"pool_size": 64}, "method": {"name": name, "batch_size": 65, **extra}})
        M.build_config({"task": {"pool_size": 64}, "method": {"name": name, "batch_size": 64, **extra}})
    # PACZero uses the whole pool every step: no batch, so nothing to refuse
    M.build_config({"task": {"pool_size": 8}, "method": {"name": "paczero", "subsets": 4}})


def test_learning_rate_hook():
    cfg = M.build_config({"method": {"name": "mezo", "lr": 0.5, "lr_schedule": "linear"}}).method
    assert [cfg.lr_at(t, 4) for t in range(4)] == [0.5, 0.375, 0.25, 0.125]
    cfg = M.build_config({"method": {"name": "mezo", "lr": 0.5, "lr_schedule": "polynomial", "lr_power": 2}}).method
    assert cfg.lr_at(2, 4) == 0.5 * 0.25
    # BBoxER has no learning rate; its transcript keeps the value it always recorded
    assert bboxer.BBoxER.lr_at(object.__new__(bboxer.BBoxER), 7) == 1e-6


# ---------------------------------------------------------------------------------------------------- hooks
def test_multi_process_hook_refuses_torchrun(monkeypatch):
    assert [c.name for c in M.method_classes() if not c.multi_process] == ["dpsgd", "bboxer", "fo"]

    class Single(Method):
        name = "single"
        multi_process = False

    monkeypatch.setattr(dist, "world", lambda: 2)
    with pytest.raises(ConfigError, match="method.name: single runs in one process"):
        Single(None, None, None, 0, 1)
    Method(None, None, None, 0, 1)  # the default shards fine


def test_secret_and_threat_model_hooks():
    assert [c.name for c in M.method_classes() if c.needs_secret] == ["paczero", "dpzero", "dpzo", "dpsgd"]
    assert [c.name for c in M.method_classes() if c.threat_model == "secret-subset"] == ["paczero"]
    assert all(c.secret_subset(None, 0, 10, None) is None for c in M.method_classes() if c.name != "paczero")


def test_frontier_role_hook():
    """The report's ceiling is whichever method says so (fo), read from the class, not from its name."""
    assert [c.name for c in M.method_classes() if c.frontier_role == "ceiling"] == ["fo"]
    assert all(c.frontier_role is None for c in M.method_classes() if c.name != "fo")


def test_the_audit_gets_j_from_the_method_own_derivation():
    cfg = M.build_config({"method": {"name": "paczero", "subsets": 8}}).method
    design, j = M.method_class("paczero").secret_subset(cfg, 3, 40, SecretKey(123))
    assert (design == paczero.balanced_design(40, 8, 3)).all()
    assert j == paczero.secret_index(cfg, SecretKey(123)) == int(SecretKey(123).numpy("subset").integers(8))


def test_report_hooks():
    P = M.method_class("paczero")
    assert P.mechanisms() == {"paczero-zpl": ("PACZero-ZPL", "pac-zpl"), "paczero-mi": ("PACZero-MI", "pac-mi")}
    assert P.mechanism_of({"name": "paczero", "mode": "mi"}) == "paczero-mi"
    assert P.label_of({"name": "paczero", "mode": "mi", "budget": 0.3}) == "PACZero-MI 0.3 nats"
    assert P.label_of({"name": "paczero", "mode": "zpl"}) == "PACZero-ZPL"
    D = M.method_class("dpzo")
    assert D.mechanisms() == {"dpzo": ("DP-ZO", "dp")} and D.label_of({"name": "dpzo", "epsilon": 2.0}) == "dpzo ε=2"
    assert M.method_class("bboxer").mechanisms() == {"bboxer": ("BBoxER", "generalization bound")}
