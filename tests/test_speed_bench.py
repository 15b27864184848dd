"""benchmarks/speed.py: the pure-Python parts that decide what the benchmark reports.

The busy-machine detection (``/proc/stat`` samples, load average), the refusal to run on a
busy machine, the ratios and targets, the argument defaults, and the profile breakdown of
``benchmarks/profile_step.py``. Nothing here runs the benchmark or imports TensorFlow.
"""

import importlib.util
import os

import pytest

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "benchmarks")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(BENCH, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed():
    return _load("speed")


@pytest.fixture(scope="module")
def profile_step():
    return _load("profile_step")


def _stat(user, nice, system, idle, iowait=0, irq=0, softirq=0, steal=0, guest=0):
    return (f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} {guest} 0\n"
            f"cpu0 1 2 3 4 5 6 7 8 9 10\n"
            "intr 12345\nctxt 999\n")


def test_parse_proc_stat_reads_the_aggregate_line(speed):
    assert speed.parse_proc_stat(_stat(10, 1, 5, 100, 3, 1, 2, 4, 7)) == [10, 1, 5, 100, 3, 1, 2,
                                                                          4, 7, 0]
    with pytest.raises(ValueError):
        speed.parse_proc_stat("cpu0 1 2 3 4\nintr 5\n")


def test_others_cpu_fraction(speed):
    before = speed.parse_proc_stat(_stat(100, 0, 50, 1000))
    # 2 CPUs x 2 s x 100 ticks = 400 ticks; all idle.
    idle = speed.parse_proc_stat(_stat(100, 0, 50, 1400))
    assert speed.others_cpu_fraction(before, idle) == 0.0
    # Half of the time busy (user + system + softirq + steal), the rest idle or iowait.
    half = speed.parse_proc_stat(_stat(250, 10, 70, 1150, iowait=50, softirq=10, steal=10))
    assert speed.others_cpu_fraction(before, half) == pytest.approx(0.5)
    # This process's own CPU time (1 s = 100 ticks at 100 Hz) is not "others".
    assert speed.others_cpu_fraction(before, half, own_cpu_seconds=1.0,
                                     clock_ticks=100) == pytest.approx(0.25)
    assert speed.others_cpu_fraction(before, half, own_cpu_seconds=5.0) == 0.0  # clipped
    assert speed.others_cpu_fraction(before, before) is None  # no time passed
    with pytest.raises(ValueError):
        speed.others_cpu_fraction(half, before)


def test_quiet_verdict_thresholds(speed):
    assert speed.quiet_verdict(0.2, 0.1) == (True, [])
    quiet, reasons = speed.quiet_verdict(0.51, 0.1)
    assert not quiet and "load" in reasons[0]
    quiet, reasons = speed.quiet_verdict(0.1, 0.26)
    assert not quiet and "26%" in reasons[0]
    assert speed.quiet_verdict(0.5, 0.25)[0]  # at the thresholds: still quiet
    quiet, reasons = speed.quiet_verdict(None, None)
    assert quiet and len(reasons) == 2  # unmeasured: named, not busy


def test_measure_quiet_with_unreadable_proc_stat(speed, tmp_path):
    check = speed.measure_quiet(0.0, path=str(tmp_path / "missing"))
    assert check["others_cpu_fraction"] is None and "proc_stat_error" in check
    assert check["load1_threshold"] == 0.5 and check["others_threshold"] == 0.25


def test_measure_quiet_on_fake_samples(speed, tmp_path, monkeypatch):
    samples = iter([_stat(0, 0, 0, 0), _stat(300, 0, 0, 100)])  # others used 75%

    class Fake:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return next(samples)

    monkeypatch.setattr(speed, "open", Fake, raising=False)
    monkeypatch.setattr(speed.os, "getloadavg", lambda: (0.1, 0.2, 0.3))
    check = speed.measure_quiet(0.0, path="/proc/stat")
    assert check["others_cpu_fraction"] == pytest.approx(0.75, abs=0.05)
    assert check["quiet_machine"] is False
    assert check["loadavg"] == [0.1, 0.2, 0.3]


def test_main_refuses_a_busy_machine_unless_allowed(speed, monkeypatch, capsys):
    busy = {"quiet_machine": False, "loadavg": [1.5, 1.0, 0.8], "others_cpu_fraction": 0.6,
            "cpu_count": 2, "reasons": ["1-minute load average 1.50 > 0.5"]}
    monkeypatch.setattr(speed, "measure_quiet", lambda seconds: dict(busy))
    assert speed.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "REFUSING" in err and "1.5" in err and "--allow-busy" in err


def test_ratio_and_targets(speed):
    assert speed.ratio(3.0, 2.0) == 1.5
    assert speed.ratio(None, 2.0) is None and speed.ratio(1.0, 0) is None
    t = speed.target_entry({"float32": 20.0, "bfloat16": 31.0}, 20.0, 1.5, "bfloat16", "x")
    assert t["by_precision"]["float32"] == {"samtone_tf": 20.0, "ratio": 1.0, "met": False}
    assert t["by_precision"]["bfloat16"]["met"] is True
    assert t["met"] is True and t["met_in"] == ["bfloat16"]
    assert t["best_precision"] == "bfloat16" and t["best_ratio"] == pytest.approx(1.55)
    assert t["met_by_auto"] is True and t["target"] == ">= 1.5x"
    t = speed.target_entry({"float32": 20.0}, 20.0, 1.5, "bfloat16")
    assert t["met"] is False and t["met_in"] == [] and t["met_by_auto"] is None
    t = speed.target_entry({"float32": 20.0}, 20.0, 1.0)
    assert t["met"] is True  # equal counts as met for ">= 1x"
    t = speed.target_entry({"float32": 20.0}, None, 2.0)
    assert t["skipped"] and t["met"] is None and "by_precision" not in t


def test_targets_cover_the_issue(speed):
    keys = {k: (task, setting, mode, thr) for k, task, setting, mode, thr in speed.TARGETS}
    assert keys["encoding_fixed_vs_st_float32"] == ("encode", "fixed", "float32", 2.0)
    assert keys["encoding_fixed_vs_st_bf16_autocast"][2:] == ("bfloat16-autocast", 1.0)
    assert keys["training_fixed_vs_st_float32"][3] == 1.5
    assert keys["training_recipe_vs_st_float32"] == ("train", "recipe", "float32", 1.5)
    assert keys["training_recipe_vs_st_bf16_autocast"][3] == 1.0


def test_quiet_text_states_flag_and_numbers(speed):
    check = {"quiet_machine": False, "loadavg": [1.2, 1.0, 0.9], "others_cpu_fraction": 0.4,
             "cpu_count": 2, "sample_seconds": 2.0, "load1_threshold": 0.5,
             "others_threshold": 0.25, "reasons": ["1-minute load average 1.20 > 0.5"]}
    text = speed.quiet_text(check, {"start": [1.2, 1.0, 0.9], "after_encoding": [2.0, 1.5, 1.0]})
    assert "NO (busy machine: not comparable)" in text
    assert "[1.2, 1.0, 0.9]" in text and "40%" in text and "after_encoding 2.0" in text
    check.update(quiet_machine=True, reasons=[], others_cpu_fraction=None)
    text = speed.quiet_text(check, {})
    assert "Quiet machine: yes" in text and "n/a" in text


def test_parse_args_defaults(speed):
    args = speed._parse_args(["--quick"])
    assert args.batch_size == speed.QUICK["batch_size"]
    assert args.variant_names == list(speed.QUICK_VARIANTS)
    assert args.precisions_list == ["float32", "bfloat16"]
    assert args.markdown.endswith(os.path.join("results", "speed.md"))
    assert args.output.endswith(os.path.join("results", "speed.json"))
    args = speed._parse_args(["--output", "/tmp/x/run.json", "--variants", "gte-joint"])
    assert args.batch_size == 32 and args.recipe_length == 128
    assert args.variant_names == ["in-batch", "gte-joint"]  # the reference is always run
    assert args.markdown == "/tmp/x/run.md"
    with pytest.raises(SystemExit):
        speed._parse_args(["--precisions", "float64"])
    with pytest.raises(SystemExit):
        speed._parse_args(["--variants", "nope"])


def test_flops_and_rotation(speed):
    # One layer, L=1: 2 * (4 h^2 + 2 h i) + 4 h.
    assert speed.encoder_flops(1, 1, 2, 3) == 2 * (16 + 12) + 8
    assert speed._rotated(["a", "b", "c"], 4) == ["b", "c", "a"]


def test_profile_breakdown(profile_step):
    out = profile_step.breakdown({"dense": 0.6, "gelu": 0.1}, 1.0)
    assert out["sum_seconds"] == pytest.approx(0.7) and out["sum_share"] == pytest.approx(0.7)
    assert out["components"]["dense"]["share"] == pytest.approx(0.6)
    assert out["components"]["other"]["seconds"] == pytest.approx(0.3)
    out = profile_step.breakdown({"dense": 1.5}, 1.0)  # the parts alone exceed the whole
    assert out["components"]["other"]["share"] == pytest.approx(-0.5)
    assert set(profile_step.IN_LAYER) <= set(profile_step.LABELS)
    assert "other" in profile_step.LABELS
