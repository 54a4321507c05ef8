"""benchmarks/frontier.py matches every mechanism to a posterior level without ever loosening it: the ε or nats a
run gets must bound the attacker at or below the level it is drawn at (a frontier point placed left of its true
bound would flatter the mechanism)."""

from pathlib import Path

import pytest

from privtune.privacy.bounds import eps_to_posterior, mi_to_posterior

REPO = Path(__file__).resolve().parents[2]


def _value(overrides: list[str], key: str) -> float:
    return float(next(o.split("=", 1)[1] for o in overrides if o.startswith(key + "=")))


@pytest.mark.parametrize("level", [0.55, 0.6, 0.75, 0.88, 0.95, 0.997, 0.5000001])
def test_matched_levels_never_exceed_the_posterior(frontier, level):
    for mechanism, (preset, at) in frontier.PRESETS.items():
        if at is None:
            continue
        if mechanism != "paczero-mi" and level < (1 + frontier.DELTA) / 2:
            with pytest.raises(ValueError, match="unreachable"):  # δ alone allows more than this level
                at(level)
            continue
        over = at(level)
        if mechanism == "paczero-mi":
            bound = mi_to_posterior(_value(over, "method.budget"))
        else:
            bound = eps_to_posterior(_value(over, "method.epsilon"), _value(over, "method.delta"))
        assert bound <= level, (mechanism, level, bound)
        assert bound > level - 2e-4, (mechanism, level, bound)  # rounding down costs at most a hair


def test_every_preset_exists_and_the_plan_covers_each_level_and_seed(frontier):
    for preset, _ in frontier.PRESETS.values():
        assert (REPO / preset).is_file(), preset
    todo = frontier.plan("agnews", list(frontier.PRESETS), [0.6, 0.88], [0, 1], [])
    one_level = sum(at is None for _, at in frontier.PRESETS.values())
    assert len(todo) == 2 * (one_level + 2 * (len(frontier.PRESETS) - one_level))
    assert len({r["tag"] for r in todo}) == len(todo)  # every run has its own directory
    assert all("task.name=agnews" in r["overrides"] for r in todo)


def test_rows_refuse_runs_that_disagree_on_zero_shot(frontier):
    run = {"mechanism": "mezo", "level": None, "seed": 0, "accuracy": 0.8, "initial_accuracy": 0.5, "cpu_s": 1.0,
           "guarantee": "none", "epsilon": None, "delta": None, "mi_nats": None, "mia_posterior_bound": None,
           "unanimity_rate": None}
    rows = frontier.rows_of([run, {**run, "seed": 1, "accuracy": 0.9}])
    assert rows[0]["method"] == "zero-shot" and rows[0]["accuracy_mean"] == 0.5
    assert rows[1]["accuracy_mean"] == pytest.approx(0.85) and rows[1]["seeds"] == 2
    with pytest.raises(SystemExit):
        frontier.rows_of([run, {**run, "seed": 1, "initial_accuracy": 0.6}])


def test_a_run_is_kept_only_for_the_config_it_ran(frontier, tmp_path):
    """The sweep resumes by the resolved config, not the command line: an edited preset reruns its runs."""
    from privtune import config as C
    from privtune import methods as M

    preset = tmp_path / "preset.yaml"
    preset.write_text("method: {name: mezo, lr: 0.3}\ntrain: {steps: 5}\n")
    out = tmp_path / "runs" / "mezo_s0"
    out.mkdir(parents=True)
    overrides = ["train.seed=1"]
    cfg = M.build_config(C.apply_overrides(C.load_yaml(preset), [*overrides, f"out_dir={out}"]))
    (out / "config.yaml").write_text(C.dump(cfg))
    (out / "eval.json").write_text("{}")
    assert not frontier.kept(out, preset, overrides)  # unfinished: no CPU record yet
    (out / "sweep_cpu.json").write_text('{"cpu_s": 1.0}')
    assert frontier.kept(out, preset, overrides)
    assert not frontier.kept(out, preset, ["train.seed=2"])
    preset.write_text("method: {name: mezo, lr: 0.1}\ntrain: {steps: 5}\n")  # the preset changed since
    assert not frontier.kept(out, preset, overrides)


def test_merge_replaces_the_redone_runs_in_place_and_keeps_the_rest(frontier):
    def run(m, p, s, acc):
        return {"mechanism": m, "level": p, "seed": s, "accuracy": acc}

    old = {"task": "agnews", "command": "frontier.py --task agnews", "levels": [0.6, 0.88], "seeds": [0, 1],
           "wall_s": 10.0, "runs": [run("mezo", None, 0, 0.8), run("dpzero", 0.6, 0, 0.5), run("dpzero", 0.6, 1, 0.6),
                                    run("dpsgd", 0.6, 0, 0.7)]}
    new = {"task": "agnews", "command": "frontier.py --task agnews --only dpzero --merge", "levels": [0.55, 0.6],
           "seeds": [0], "wall_s": 5.0}
    out, runs = frontier.merged(old, new, [run("dpzero", 0.6, 0, 0.65), run("dpzero", 0.55, 0, 0.55)])
    assert runs == [run("mezo", None, 0, 0.8), run("dpzero", 0.6, 0, 0.65), run("dpzero", 0.6, 1, 0.6),
                    run("dpsgd", 0.6, 0, 0.7), run("dpzero", 0.55, 0, 0.55)]
    assert out["commands"] == [old["command"], new["command"]] and out["command"] == new["command"]
    assert out["levels"] == [0.55, 0.6, 0.88] and out["seeds"] == [0, 1] and out["wall_s"] == 15.0
    again, _ = frontier.merged({**out, "runs": runs}, {**new, "command": "third"}, [])
    assert again["commands"] == [old["command"], new["command"], "third"]
    with pytest.raises(SystemExit, match="task 'agnews', not 'sst2'"):
        frontier.merged(old, {**new, "task": "sst2"}, [])
