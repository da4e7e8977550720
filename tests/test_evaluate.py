"""Final evaluation through lm-eval: task configs generated from the adapters, records, CLI, and
the consistency check — greedy in-loop eval (hf engine + ``task.score_many``) and lm-eval agree
exactly, completion by completion, on the same checkpoint and problems."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness import evaluate, records
from harness.cli import main
from harness.errors import HarnessError
from harness.lmeval_tasks import build_task_config, is_unsafe, split_rows, write_rows
from harness.models import LoadedModel, build_tiny_model, tiny_config
from harness.registries import TASKS, get_task
from harness.tokenizer_build import build_tokenizer
from harness.types import Problem, Task

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# A toy chat template that starts with the bos text, like SmolLM2's: the engine and lm-eval must
# then both skip adding a second bos.
CHAT_TEMPLATE = (
    "<|bos|>{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


class Toy(Task):
    """Plain prompts, stop strings that the varied tiny model does emit, and a scorer that
    accepts about half of its completions, so agreement is checked on 0s and 1s alike."""

    name = "toy"
    stop = ("rom", " total")
    max_new_tokens = 16

    def load(self, split: str) -> list[Problem]:
        if split not in ("train", "test"):
            raise HarnessError(f"toy: unknown split {split}")
        off = 100 if split == "train" else 0
        return [Problem(f"{split}-{i}", f"What is {i + off} + {7 * i}?" + " pad" * (i % 3),
                        f"{8 * i + off} is the sum", str(8 * i + off)) for i in range(8)]

    def prompt(self, problem: Problem) -> str:
        return f"Question: {problem.question}\nAnswer:"

    def score(self, problem: Problem, completion: str) -> float:
        return float(len(completion) % 2 == 0)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated lm-eval data files go to a temp dir (the model cache stays where it is)."""
    where = tmp_path_factory.getbasetemp() / "lmeval"
    monkeypatch.setattr("harness.lmeval_tasks.cache_dir", lambda: where)
    if not os.environ.get("HARNESS_DATA_DIR") and SHARED_DATA.is_dir():
        monkeypatch.setenv("HARNESS_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="module")
def varied() -> LoadedModel:
    """tiny-random's architecture and tokenizer with larger initial weights (std 0.3): the
    plain preset answers every prompt with the same token, which would make agreement trivial.
    """
    tok = build_tokenizer()
    model = build_tiny_model(tiny_config(len(tok), initializer_range=0.3), seed=1)
    return LoadedModel(model, tok, "tiny-varied", "tiny-varied", "preset")


@pytest.fixture(scope="module")
def chat_model(varied: LoadedModel) -> LoadedModel:
    tok = copy.deepcopy(varied.tokenizer)
    tok.chat_template = CHAT_TEMPLATE
    return LoadedModel(varied.model, tok, "tiny-chat", "tiny-chat", "preset")


# ----------------------------------------------------------------------------- the config


def test_config_is_generated_from_the_adapter(varied: LoadedModel) -> None:
    from lm_eval.tasks import TaskManager

    task, problems = Toy(), Toy().load("test")
    cfg = build_task_config(task, problems, tokenizer=varied.tokenizer, max_new_tokens=9)
    assert cfg["task"] == "harness_toy" and cfg["dataset_path"] == "json"
    assert cfg["output_type"] == "generate_until" and cfg["num_fewshot"] == 0
    assert cfg["generation_kwargs"] == {"until": ["rom", " total"], "max_gen_toks": 9,
                                        "do_sample": False, "temperature": 0.0}
    assert cfg["metric_list"] == [{"metric": "acc", "aggregation": "mean",
                                   "higher_is_better": True}]
    assert cfg["unsafe_code"] is False and cfg["metadata"]["prompt_format"] == "plain"
    path = Path(cfg["dataset_kwargs"]["data_files"]["test"])
    assert records.read_jsonl(path) == split_rows(task, problems, varied.tokenizer)

    lm_task = TaskManager(include_defaults=False).load([cfg])["tasks"]["harness_toy"]
    docs = list(lm_task.eval_docs)
    assert [d["id"] for d in docs] == [p.id for p in problems]
    for doc, p in zip(docs, problems, strict=True):  # lm-eval adds nothing to the prompt
        assert lm_task.fewshot_context(doc, num_fewshot=0) == task.format_prompt(p)
    assert lm_task.process_results(docs[0], ["ab"]) == {"acc": 1}
    assert lm_task.process_results(docs[0], ["abc"]) == {"acc": 0}


def test_chat_prompts_are_rendered_like_format_prompt(chat_model: LoadedModel) -> None:
    task, problems = Toy(), Toy().load("test")[:2]
    for chat, expect in ((None, "chat"), (True, "chat"), (False, "plain")):
        cfg = build_task_config(task, problems, tokenizer=chat_model.tokenizer, chat=chat)
        rows = records.read_jsonl(Path(cfg["dataset_kwargs"]["data_files"]["test"]))
        assert [r["prompt"] for r in rows] == [
            task.format_prompt(p, chat_model.tokenizer, chat) for p in problems]
        assert cfg["metadata"]["prompt_format"] == expect
    assert rows[0]["plain_prompt"] == task.prompt(problems[0])


def test_data_file_is_content_addressed(tmp_path: Path) -> None:
    rows = split_rows(Toy(), Toy().load("test"))
    a = write_rows(rows, "harness_toy", "test", tmp_path)
    assert write_rows(rows, "harness_toy", "test", tmp_path) == a
    b = write_rows(rows[:3], "harness_toy", "test", tmp_path)
    assert b != a and len(records.read_jsonl(b)) == 3


def test_duplicate_ids_and_unknown_docs_are_errors() -> None:
    task = Toy()
    p = task.load("test")[0]
    with pytest.raises(HarnessError, match="duplicate problem id 'test-0'"):
        split_rows(task, [p, p])
    cfg = build_task_config(task, [p])
    with pytest.raises(HarnessError, match="unknown"):
        cfg["process_results"]({"id": "nope"}, ["x"])


def test_unsafe_code_gate_follows_the_task() -> None:
    class Coder(Toy):
        unsafe_code = True

    assert build_task_config(Coder(), Toy().load("test")[:1])["unsafe_code"] is True
    if "mbpp_plus" in TASKS:
        assert is_unsafe(get_task("mbpp_plus"))


# ----------------------------------------------------------------------------- consistency


def _agree(loaded: LoadedModel, task: Task, problems: list[Problem], chat: bool | None = None,
           max_new_tokens: int | None = None, batch_size: int = 3) -> evaluate.EvalResult:
    """lm-eval (batches sorted by length) vs the engine (one batch): same texts, same 0/1."""
    result = evaluate.evaluate_problems(loaded, task, problems, chat=chat,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size)
    correct, texts = evaluate.engine_correctness(loaded, task, problems, chat=chat,
                                                 max_new_tokens=max_new_tokens)
    differ = [(p.id, a, b) for p, a, b in zip(problems, result.completions, texts, strict=True)
              if a != b]
    assert not differ, f"lm-eval vs engine completions differ on {len(differ)}: {differ[:2]}"
    assert result.correct == correct
    assert result.ids == [p.id for p in problems]
    return result


def test_lm_eval_agrees_with_in_loop_eval(varied: LoadedModel, chat_model: LoadedModel) -> None:
    problems = Toy().load("test")
    result = _agree(varied, Toy(), problems)
    assert 0 < sum(result.correct) < len(problems)  # a non-trivial vector
    assert any(t == "" or len(t) < 16 for t in result.completions)  # stops did fire
    chat = _agree(chat_model, Toy(), problems[:4])
    assert chat.settings["prompt_format"] == "chat"
    assert chat.samples[0]["arguments"][0][0].startswith("<|bos|>[user] Question:")


@pytest.mark.parametrize("name", ["arith", "gsm8k"])
def test_real_tasks_agree(varied: LoadedModel, name: str) -> None:
    if name not in TASKS:
        pytest.skip(f"task {name} not registered")
    task = get_task(name)
    try:
        problems = task.load("test")[:4]
    except HarnessError as exc:  # no data dir on this machine
        pytest.skip(str(exc))
    result = _agree(varied, task, problems, max_new_tokens=12)
    assert result.lm_eval["results"][f"harness_{name}"]["acc,none"] == result.accuracy


def test_fewshot_examples_come_from_the_train_split(varied: LoadedModel) -> None:
    result = evaluate.evaluate_model(varied, Toy(), limit=2, num_fewshot=2, max_new_tokens=4)
    prompt = result.samples[0]["arguments"][0][0]
    train = Toy().load("train")
    assert prompt == (f"{Toy().prompt(train[0])} {train[0].reference}\n\n"
                      f"{Toy().prompt(train[1])} {train[1].reference}\n\n"
                      f"{Toy().prompt(Toy().load('test')[0])}")
    assert result.settings["prompt_format"] == "plain+2shot"
    assert result.lm_eval["n-shot"]["harness_toy"] == 2


def test_generation_longer_than_the_context_is_a_user_error(varied: LoadedModel) -> None:
    with pytest.raises(HarnessError, match="does not fit the model's context of 1024"):
        evaluate.evaluate_problems(varied, Toy(), Toy().load("test")[:1], max_new_tokens=2048)


# ----------------------------------------------------------------------------- records + CLI


def test_final_eval_hook_writes_final_json(varied: LoadedModel, tmp_path: Path) -> None:
    task = Toy()
    st = SimpleNamespace(
        policy=varied, task=task, eval_set=task.load("test")[:3], max_new_tokens=6, step=7,
        run_dir=tmp_path, cfg=SimpleNamespace(chat=None, model="tiny-varied", task_params={}),
    )
    varied.model.train()
    rng = torch.get_rng_state()
    acc = evaluate.final_eval_hook(st)
    assert torch.equal(torch.get_rng_state(), rng)  # lm-eval did not reseed the trainer's RNG
    assert varied.model.training  # the hook leaves the policy's mode as it found it
    varied.model.eval()
    final = records.read_json(tmp_path / "final.json")
    assert final["accuracy"] == acc == sum(final["correct"]) / 3
    assert final["ids"] == ["test-0", "test-1", "test-2"] and final["n"] == 3
    assert final["task"] == "toy" and final["settings"]["step"] == 7
    assert final["lm_eval"]["results"]["harness_toy"]["acc,none"] == acc
    assert "samples" not in final["lm_eval"] and final["samples_file"] == "final_samples.jsonl"
    samples = records.read_jsonl(tmp_path / "final_samples.jsonl")
    assert [s["doc"]["id"] for s in samples] == final["ids"]
    assert [s["acc"] for s in samples] == final["correct"]


def _make_run(tmp_path: Path, loaded: LoadedModel, task: str) -> Path:
    from harness.checkpoint import save_checkpoint

    run_dir = tmp_path / "runs" / f"{task}-uniform-s0-abc"
    save_checkpoint(run_dir, loaded.model, loaded.tokenizer, {"step": 2})
    records.write_json(run_dir / "config.json", {"run_id": run_dir.name, "config": {
        "task": task, "model": "tiny-varied", "eval_n": 3, "chat": None, "max_new_tokens": 6,
        "task_params": {}}})
    return run_dir


def test_cli_eval_run_and_model(varied: LoadedModel, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    if "arith" not in TASKS:
        pytest.skip("task arith not registered")
    run_dir = _make_run(tmp_path, varied, "arith")
    assert main(["eval", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "|harness_arith|" in out and "-> " in out
    final = records.read_json(run_dir / "final.json")
    assert final["n"] == 3 and final["settings"]["max_new_tokens"] == 6
    assert final["settings"]["checkpoint"].endswith("checkpoint")

    out_file = tmp_path / "baselines" / "b.json"
    args = ["eval", "--model", str(run_dir / "checkpoint"), "--task", "arith", "--limit", "3",
            "--max-new-tokens", "6", "--out", str(out_file)]
    assert main(args) == 0
    baseline = json.loads(out_file.read_text())
    assert baseline["correct"] == final["correct"] and baseline["ids"] == final["ids"]
    assert (tmp_path / "baselines" / "b_samples.jsonl").is_file()


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "tiny-random"], "--model needs --task"),
    (["eval", "--run", "/nonexistent/run"], "not a run directory"),
    (["eval", "--run", "x", "--task", "arith"], "drop --task"),
    (["eval", "--model", "m", "--task", "arith", "--limit", "-1"], "--limit -1"),
    (["eval", "--model", "m", "--task", "arith", "--task-param", "n_steps"],
     "--task-param 'n_steps': expected KEY=VALUE"),
])
def test_cli_user_errors(argv: list[str], message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ----------------------------------------------------------------------------- vllm backend


def test_vllm_backend_needs_a_directory_then_vllm(
    varied: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(HarnessError, match="built in memory; use --backend hf"):
        evaluate.evaluate_problems(varied, Toy(), Toy().load("test")[:2], backend="vllm")
    with pytest.raises(HarnessError, match="backend 'sglang': choose from hf, vllm"):
        evaluate.evaluate_problems(varied, Toy(), Toy().load("test")[:2], backend="sglang")
    if "arith" not in TASKS:
        pytest.skip("task arith not registered")
    run_dir = _make_run(tmp_path, varied, "arith")
    assert main(["eval", "--run", str(run_dir), "--backend", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "vllm" in err and "Traceback" not in err  # not installed here / no GPU: one line
    assert not (run_dir / "final.json").exists()


def test_vllm_backend_builds_lm_eval_vllm_on_the_model_directory(
    varied: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM cannot run here, so lm-eval's 'vllm' model class is replaced by one that records
    its arguments and serves with lm-eval's hf backend from the same directory: the harness
    side (which directory, which settings, the records) is what this checks."""
    from lm_eval.api import registry
    from lm_eval.models.huggingface import HFLM

    from harness.models import load_model

    varied.model.save_pretrained(tmp_path / "m")
    varied.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    seen: dict[str, object] = {}

    def fake_vllm(pretrained: str, tokenizer: str, batch_size: int, **kw: object) -> HFLM:
        seen.update(pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size, **kw)
        return HFLM(pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size,
                    device="cpu")

    real_get_model = registry.get_model
    monkeypatch.setattr("harness.vllm_engine.require_vllm", lambda: None)
    monkeypatch.setattr(registry, "get_model",
                        lambda name: fake_vllm if name == "vllm" else real_get_model(name))
    monkeypatch.setenv("HARNESS_VLLM_GPU_MEMORY_UTILIZATION", "0.5")
    problems = Toy().load("test")[:4]
    got = evaluate.evaluate_problems(loaded, Toy(), problems, backend="vllm", batch_size=4)
    assert seen == {"pretrained": str(tmp_path / "m"), "tokenizer": str(tmp_path / "m"),
                    "batch_size": 4, "gpu_memory_utilization": 0.5, "seed": 0}
    assert got.settings["backend"] == "vllm"
    want = evaluate.evaluate_problems(loaded, Toy(), problems, batch_size=4)
    assert (got.correct, got.completions) == (want.correct, want.completions)


# ----------------------------------------------------------------------------- slow: SmolLM2


@pytest.mark.slow
@pytest.mark.parametrize("name, n", [("gsm8k", 20), ("mbpp_plus", 10)])
def test_smollm2_lm_eval_agrees_with_in_loop_eval(name: str, n: int) -> None:
    from harness.models import load_model

    task = get_task(name)
    loaded = load_model("smollm2-135m")
    result = _agree(loaded, task, task.load("test")[:n], batch_size=n)
    assert result.settings["prompt_format"] == "chat"
    print(f"{name}: {n} problems agree; accuracy {result.accuracy:.3f}, lm-eval "
          f"{result.settings['seconds']:.0f} s")


@pytest.mark.vllm
@pytest.mark.gpu
def test_real_vllm_backend_scores_like_hf() -> None:
    """On a GPU with vLLM: the same problems through lm-eval's vllm and hf backends. vLLM's
    kernels round differently, so greedy paths may part on near-ties: most must agree."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        pytest.skip("needs vLLM and a CUDA GPU")
    from harness.models import load_model

    task = get_task("gsm8k")
    loaded = load_model("smollm2-135m")
    problems = task.load("test")[:20]
    got = evaluate.evaluate_problems(loaded, task, problems, backend="vllm", batch_size=20)
    want = evaluate.evaluate_problems(loaded, task, problems, batch_size=20)
    assert got.settings["backend"] == "vllm" and got.n == 20
    same = sum(a == b for a, b in zip(got.completions, want.completions, strict=True))
    assert same >= 15, f"only {same}/20 greedy completions agree between vllm and hf"
