"""Contract test of the npu backend against torch_npu's REAL op schemas, without NPUs.

A stand-in ``torch_npu`` (tests/standin/torch_npu) defines the ops from the verbatim schema strings of the
torch-npu 2.13.0/2.14.0 wheel, so torch's dispatcher binds every call exactly as the real binding does
(names, positional vs keyword-only, types, defaults, output order), and answers from the sim backend.
Every scenario runs in ONE subprocess (tests/standin/contract_driver.py): the stand-in never becomes
importable here, and its ``torch.library`` definitions and the privateuse1 rename never touch this process.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "standin"


def _load_driver():
    spec = importlib.util.spec_from_file_location("_npu_contract_driver", STANDIN / "contract_driver.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # top level is data only: imports neither torch_npu nor the stand-in
    return mod


DRIVER = _load_driver()
SCENARIOS = DRIVER.SCENARIOS
LEGAL = [sid for sid, (_, mut, exp) in SCENARIOS.items() if exp == "ok"]
ERRORS = [sid for sid, (_, mut, exp) in SCENARIOS.items() if exp != "ok" and mut is None]
MUTANTS = [sid for sid, (_, mut, exp) in SCENARIOS.items() if mut is not None]

DISPATCH_DTYPES = {  # per output position, the dtypes the GE IR allows (torch-npu-api.md §1a)
    0: {"torch.bfloat16", "torch.float16", "torch.int8"},
    1: {"torch.float32"},
    2: {"torch.int32"},
    3: {"torch.int64"},
    4: {"torch.int32"},
    5: {"torch.int32"},
    6: {"torch.float32"},
}


def _standin_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(STANDIN), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    env["MOE_CTS_NPU_STANDIN"] = "1"
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"  # never autoload a real torch_npu, were one installed
    env.pop("TASK_QUEUE_ENABLE", None)  # the backend must set it itself before importing torch_npu
    return env


@pytest.fixture(scope="module")
def contract():
    proc = subprocess.run([sys.executable, str(STANDIN / "contract_driver.py")], env=_standin_env(),
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    if proc.returncode != 0:
        pytest.fail(f"contract driver failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _outcome(res) -> str:
    if res["outcome"] == "raw":
        return f"unexpected {res['type']}: {res['message']}\n{res.get('traceback', '')}"
    return json.dumps({k: v for k, v in res.items() if k != "ranks"})[:3000]


# ------------------------------------------------------------------------------ legal calls
@pytest.mark.parametrize("sid", LEGAL)
def test_binding_accepts_call(contract, sid):
    res = contract["scenarios"][sid]
    assert res["outcome"] == "ok", _outcome(res)
    assert not res["log"], f"sim and torch_npu's output allocation disagree: {res['log']}"
    for r in res["ranks"]:
        disp = r["dispatch"]
        assert len(disp) == 7
        for i, (shape, dtype) in enumerate(disp):
            assert dtype in DISPATCH_DTYPES[i], f"rank {r['rank']} output {i}: {dtype}"
        if r["numeric"] is not None:  # identity experts: combine(dispatch(x)) == x * sum(scales)
            assert r["numeric"] < 1e-2, f"rank {r['rank']}: round trip relative error {r['numeric']}"


def test_every_keyword_exercised(contract):
    """The legal scenarios together pass every keyword-only argument the suite uses."""
    used_d = set().union(*(set(r["keywords"]) for s in LEGAL for r in contract["scenarios"][s]["ranks"]))
    used_c = set().union(*(set(r["combine_keywords"]) for s in LEGAL for r in contract["scenarios"][s]["ranks"]))
    want_d = {"scales", "x_active_mask", "expert_scales", "performance_info", "group_tp", "tp_world_size",
              "tp_rank_id", "shared_expert_num", "shared_expert_rank_num", "quant_mode", "global_bs",
              "expert_token_nums_type", "comm_alg", "zero_expert_num", "copy_expert_num", "const_expert_num"}
    want_c = {"tp_send_counts", "x_active_mask", "expand_scales", "shared_expert_x", "ori_x",
              "const_expert_alpha_1", "const_expert_alpha_2", "const_expert_v", "performance_info", "group_tp",
              "tp_world_size", "tp_rank_id", "shared_expert_num", "shared_expert_rank_num", "global_bs",
              "comm_quant_mode", "comm_alg", "zero_expert_num", "copy_expert_num", "const_expert_num"}
    assert want_d <= used_d, f"dispatch keywords never exercised: {sorted(want_d - used_d)}"
    assert want_c <= used_c, f"combine keywords never exercised: {sorted(want_c - used_c)}"


def test_quant_output_dtypes(contract):
    r = contract["scenarios"]["fp16_quant2_smooth_scales"]["ranks"][0]
    assert r["dispatch"][0][1] == "torch.int8" and r["dispatch"][1][1] == "torch.float32"
    base = contract["scenarios"]["base"]["ranks"][0]
    assert base["dispatch"][0][1] == "torch.bfloat16"


def test_tp2_output_shapes(contract):
    """TP=2 on the doc's layout: expand_x holds both TP halves, tp_recv_counts has tp_world_size entries."""
    for r in contract["scenarios"]["tp2"]["ranks"]:
        shapes = [s for s, _ in r["dispatch"]]
        assert shapes[5] == [2]
        assert shapes[1] == [shapes[0][0]]  # dynamic_scales: (A*tp,)


def test_add_rms_norm_outputs(contract):
    for r in contract["scenarios"]["add_rms_norm"]["ranks"]:
        assert r["combine"] == [[4, 1, 1024], [4, 1, 1], [4, 1, 1024]]


# ------------------------------------------------------------------------------ errors come back typed
@pytest.mark.parametrize("sid", ERRORS)
def test_error_reaches_suite_typed(contract, sid):
    res = contract["scenarios"][sid]
    kind, value = SCENARIOS[sid][2]
    assert res["outcome"] == kind, _outcome(res)
    if kind == "aclnn":
        assert res["status"] == value
        assert res["api"] and res["api"].startswith("aclnnMoeDistribute"), res
        assert res["cause"] == "RuntimeError"  # parsed from torch_npu's text, not passed through
    else:
        assert res["code"] == value


def test_error_names_the_kernel_version(contract):
    # the error text names the aclnn kernel the v2 op really called (V4 on a current CANN), and the
    # backend keeps it: on hardware this is how a run shows which version answered
    assert contract["scenarios"]["illegal_group_empty"]["api"] == "aclnnMoeDistributeDispatchV4"
    assert contract["scenarios"]["mut_wrong_output_order"]["api"] == "aclnnMoeDistributeCombineV4"


# ------------------------------------------------------------------------------ mutants are caught
@pytest.mark.parametrize("sid", MUTANTS)
def test_mapping_mistake_fails_loudly(contract, sid):
    res = contract["scenarios"][sid]
    kind, value = SCENARIOS[sid][2]
    assert res["outcome"] != "ok", f"{sid}: the argument-mapping mistake went unnoticed"
    assert res["outcome"] == kind, _outcome(res)
    if kind == "binding":
        assert res["code"] == value
    elif kind == "aclnn":
        assert res["status"] == value
    else:
        assert value in res["message"]


def test_misspelled_keyword_message_names_it(contract):
    msg = contract["scenarios"]["mut_misspelled_keyword"]["message"]
    assert "Unknown keyword argument 'expert_tokens_num_type'" in msg


def test_positional_keyword_only_rejected(contract):
    assert "takes 6 positional argument(s) but 7" in contract["scenarios"]["mut_keyword_positionally"]["message"]


# ------------------------------------------------------------------------------ process-level plumbing
def test_standin_process_facts(contract):
    extra = contract["extra"]
    assert extra["npu_available"] == [True, ""]
    assert extra["current_device_after_prepare"] == 3  # prepare_rank -> torch.npu.set_device("npu:3")
    assert extra["task_queue_enable"] == "0"  # set by the backend before torch_npu was imported
    assert {"npu_moe_distribute_dispatch_v2", "npu_moe_distribute_combine_v2",
            "npu_moe_distribute_combine_add_rms_norm"} <= set(extra["ops"])


def test_backend_positional_parameters_match_schema(contract):
    for op, (schema, backend) in contract["extra"]["positional"].items():
        assert schema == backend, op


API_DOC = ROOT / "docs" / "torch-npu-api.md"


def test_schemas_are_the_documented_ones():
    """The schema data the binding model and the stand-in use is byte-identical to the `- func:` lines that
    docs/torch-npu-api.md §1a quotes from the torch-npu wheel (the data cannot drift from its citation)."""
    from moe_cts import binding

    doc = [ln.strip()[len("- func: "):] for ln in API_DOC.read_text().splitlines() if ln.strip().startswith("- func: ")]
    mine = list(binding.schemas().values())
    assert len(mine) >= 6 and all(s in doc for s in mine), sorted(set(mine) - set(doc))


def _probe(code: str, standin_env: str | None) -> str:
    env = _standin_env()
    if standin_env is None:
        env.pop("MOE_CTS_NPU_STANDIN")
    else:
        env["MOE_CTS_NPU_STANDIN"] = standin_env
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_standin_needs_opt_in():
    out = _probe("from moe_cts.backends.npu import npu_available; print(npu_available())", None)
    assert out.startswith("(False, 'torch_npu not importable: the moe-cts stand-in"), out


def test_no_devices_reason():
    code = ("import os; os.environ['MOE_CTS_STANDIN_DEVICES'] = '0'\n"
            "from moe_cts.backends.npu import npu_available; print(npu_available())")
    assert _probe(code, "1") == "(False, 'no NPU devices')"


def test_no_torch_npu_here_means_skip_not_error():
    """In this process torch_npu is absent: a skip reason, and importing the backend imports nothing."""
    import moe_cts.backends.npu as npu

    assert "torch_npu" not in sys.modules
    ok, why = npu.npu_available(refresh=True)
    if "torch_npu" in sys.modules or importlib.util.find_spec("torch_npu") is not None:
        pytest.skip("a torch_npu is installed in this environment")
    assert (ok, why[:26]) == (False, "torch_npu not importable: ")
    assert "torch_npu" not in sys.modules


def test_backend_loads_by_name_without_torch_npu():
    from moe_cts.backends.base import load_backend

    be = load_backend("npu")
    assert be.name == "npu"
    assert type(be).required_env() == {"TASK_QUEUE_ENABLE": "0"}
    assert "torch_npu" not in sys.modules


# ------------------------------------------------------------------------------ the suite's own cases
@pytest.fixture(scope="module")
def suite_runs():
    proc = subprocess.run([sys.executable, str(STANDIN / "contract_driver.py"), "--suite", "16", "2048", "1000"],
                          env=_standin_env(), capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    if proc.returncode != 0:
        pytest.fail(f"contract driver --suite failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["suite"]


@pytest.mark.slow
def test_suite_cases_agree_through_the_binding(suite_runs):
    """Every generated case small enough for a loopback world (<= 16 ranks, H <= 2048; A2 and A3), run by the suite's
    own runner (moe_cts.suite.rank.run_case_on_rank, its real keyword construction) twice: on sim directly and
    on NpuBackend -> real-schema torch_npu stand-in -> sim. The defined outputs must be bit-identical and
    every rejection must carry the same kind and status: the npu path adds nothing and loses nothing."""
    assert suite_runs, "no small cases generated"
    for product in ("A2", "A3"):
        mine = {c: r for c, r in suite_runs.items() if c.startswith(product + "-")}
        assert any(r["legal"] for r in mine.values()) and any(not r["legal"] for r in mine.values()), product
    bad = {c: (r["sim"], r["npu"], r["diff"]) for c, r in suite_runs.items() if r["diff"]}
    assert not bad, "npu path disagrees with sim:\n" + "\n".join(f"{c}: {v}" for c, v in bad.items())
    logs = {c: r["log"] for c, r in suite_runs.items() if r["log"]}
    assert not logs, f"sim allocates differently from torch_npu: {logs}"
    schema = {c: r["npu"] for c, r in suite_runs.items() if r["npu"] == ["binding", "schema"]}
    assert not schema, f"the runner builds calls the real schema rejects: {schema}"
