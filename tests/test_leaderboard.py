"""Leaderboards from hand-built records (tests/fixtures_records.py) with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from harness.cli import main
from harness.leaderboard import Board, Row, build_all, build_leaderboards, render_markdown
from harness.plots import plot_board
from tests.fixtures_records import N_FINAL, N_LOOP, SCENARIO, STEPS, vec, write_run, write_scenario


def _rows(board: Board) -> dict[str, Row]:
    return {r.label: r for r in board.rows}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # eval_flops: eval-phase FLOPs booked on eval steps must not count as method overhead.
    return write_scenario(tmp_path_factory.mktemp("runs"), eval_flops=1000.0)


@pytest.fixture(scope="module")
def board(scenario: Path) -> Board:
    boards = build_leaderboards(scenario)
    assert len(boards) == 1
    return boards[0]


def test_accuracy_is_final_json_mean_with_t_interval(board: Board) -> None:
    assert board.source == "final"
    for label, spec in SCENARIO.items():
        acc = _rows(board)[label].accuracy
        x = np.asarray(spec["final"]) / N_FINAL
        assert acc.mean == pytest.approx(x.mean())
        assert acc.n == len(x)
        if len(x) > 1:
            lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
            assert (acc.low, acc.high) == (pytest.approx(lo), pytest.approx(hi))
        else:
            assert acc.half_width is None


def test_delta_and_p_values(board: Board) -> None:
    rows = _rows(board)
    cf = rows["counterfactual"].paired
    assert cf is not None and cf.test == "bootstrap"
    assert cf.delta == pytest.approx(3 / N_FINAL)  # 3 more problems right in every seed
    assert cf.n_pairs == 3 * N_FINAL and cf.n_seeds == 3
    assert cf.p_value < 0.01
    same = rows["random"].paired
    assert same is not None and same.delta == 0.0 and same.p_value == 1.0
    assert rows["uniform"].paired is None and rows["uniform"].paired_note == "reference"
    ent = rows["entropy"]
    assert ent.marked and ent.paired is None and ent.paired_note == "n<2"


def test_convergence_compute_matched_and_overheads(board: Board) -> None:
    rows = _rows(board)
    assert board.target == pytest.approx(0.5)  # uniform's final in-loop mean (5+6+4)/30
    assert board.flops_limit == pytest.approx(STEPS * 100.0)
    cf = rows["counterfactual"]
    assert (cf.convergence.step, cf.convergence.flops) == (2, pytest.approx(300.0))
    assert cf.compute_matched.step == 2
    assert cf.compute_matched.accuracy.mean == pytest.approx(0.5)
    assert cf.flops_overhead == pytest.approx(50.0)
    assert cf.wall_overhead == pytest.approx(20.0)
    assert rows["uniform"].convergence.step == STEPS
    assert rows["random"].flops_overhead == pytest.approx(0.0)
    ent = rows["entropy"]
    assert ent.convergence is None  # 30% never reaches 50%
    assert ent.compute_matched.step == STEPS
    assert ent.compute_matched.accuracy.mean == pytest.approx(0.3)


def test_markdown_cells_and_sections(board: Board) -> None:
    md = render_markdown(board)
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in md.splitlines() if line.startswith("| ") and "accuracy %" not in line}
    # final.json covers other ids (f*) than the step-0 in-loop eval (p*): no start, no gain
    assert table["counterfactual"][:3] == ["3", "75.0 ± 20.7", "—"]
    assert table["counterfactual"][3].startswith("+25.0 [")
    assert "(bootstrap, 36)" in table["counterfactual"][4]
    assert table["counterfactual"][5:] == ["2", "300", "50.0 (step 2)", "+50.0", "+20.0"]
    assert table["random"][3:5] == ["+0.0 [+0.0, +0.0]", "1.000 (bootstrap, 36)"]
    assert table["uniform"][3] == "reference"
    assert table["entropy †"][1:5] == ["33.3 (no CI)", "—", "n<2", "n<2"]
    assert table["entropy †"][5] == "—"
    assert board.start is None and "**Starting point:** —" in md
    for text in ("# arith · micro-arith · steps=4", "**Seeds:** 0, 1, 2", "B = 10000",
                 f"{N_FINAL} problems (lm-eval task `arith`", "version 0.1.0",
                 "`0123456789ab`", "† fewer than 2 seeds", "## Left out",
                 "(arith-micro-arith-steps-4-acc-step.png)", f"{N_LOOP} problems of the"):
        assert text in md, text


def test_markdown_is_deterministic(scenario: Path, board: Board) -> None:
    again = build_leaderboards(scenario)[0]
    assert render_markdown(board) == render_markdown(again) == render_markdown(board)


def test_in_loop_source_without_final_json(tmp_path: Path) -> None:
    write_scenario(tmp_path, with_final=False)
    board = build_leaderboards(tmp_path)[0]
    assert board.source == "in-loop"
    cf = _rows(board)["counterfactual"]
    assert cf.accuracy.mean == pytest.approx(0.7)
    assert cf.paired.delta == pytest.approx(0.2)  # 2 more of 10 in every seed
    md = render_markdown(board)
    assert "Accuracy column: the last in-loop eval" in md
    # every run evaluated at step 0 on the same 10 problems: 2/10 each
    assert board.start.mean == pytest.approx(0.2) and board.start.n == 10
    assert "**Starting point:** 20.0%, the step-0 in-loop eval" in md
    row = next(line for line in md.splitlines() if line.startswith("| counterfactual"))
    assert [c.strip() for c in row.split("|")[3:5]] == ["70.0 ± 24.8", "+50.0"]


def test_no_uniform_gives_dashes_and_note(tmp_path: Path) -> None:
    write_scenario(tmp_path, methods=["counterfactual", "random"])
    board = build_leaderboards(tmp_path)[0]
    assert board.baseline is None
    assert all(r.paired is None and r.paired_note == "no uniform" for r in board.rows)
    md = render_markdown(board)
    assert "No uniform run in this group" in md
    row = next(line for line in md.splitlines() if line.startswith("| counterfactual"))
    assert [c.strip() for c in row.split("|")[5:-1]] == ["—"] * 7


def test_single_seed_uses_mcnemar_when_allowed(scenario: Path) -> None:
    board = build_leaderboards(scenario, min_seeds=1)[0]
    ent = _rows(board)["entropy"]
    # seed 0: entropy 4/12 vs uniform 6/12, nested: b = 0, c = 2 → p = 2·BinomCDF(0; 2, ½)
    assert ent.paired.test == "mcnemar"
    assert ent.paired.delta == pytest.approx(-2 / N_FINAL)
    assert ent.paired.p_value == pytest.approx(0.5)
    assert "(McNemar, 12)" in render_markdown(board)


def _bad_runs(root: Path) -> None:
    write_scenario(root, methods=["uniform", "counterfactual"])
    base = dict(steps=STEPS, step_flops=100.0, step_seconds=1.0, final=vec(6, N_FINAL))
    loop = {0: vec(2, N_LOOP), 4: vec(5, N_LOOP)}
    write_run(root, method="entropy", seed=0, evals=loop, done=False, run_id="running", **base)
    corrupt = write_run(root, method="entropy", seed=1, evals=loop, run_id="corrupt", **base)
    (corrupt / "evals.jsonl").write_text('{"step": 0, "accuracy": \n')
    badcfg = write_run(root, method="entropy", seed=2, evals=loop, run_id="badconfig", **base)
    (badcfg / "config.json").write_text("{not json")
    noevals = write_run(root, method="entropy", seed=3, evals=loop, run_id="noevals", **base)
    (noevals / "evals.jsonl").unlink()
    write_run(root, method="entropy", seed=4, evals=loop, run_id="short", budget="steps=6",
              **base)
    write_run(root, method="entropy", seed=5, evals={0: vec(2, 8), 4: vec(5, 8)},
              run_id="othereval", **{**base, "final": None})
    (root / "empty-dir").mkdir()


def test_bad_records_are_left_out_by_name(tmp_path: Path) -> None:
    _bad_runs(tmp_path)
    boards, left_out = build_all(tmp_path)
    reasons = {x.run_id: x.reason for x in left_out}
    assert reasons["running"].startswith("no done.json")
    assert "corrupt JSON" in reasons["corrupt"] and "evals.jsonl:1" in reasons["corrupt"]
    assert "config.json: corrupt JSON" in reasons["badconfig"]
    assert reasons["noevals"].startswith("no evals.jsonl")
    assert "budget mismatch" in reasons["short"] and "steps=6" in reasons["short"]
    assert reasons["othereval"].startswith("eval problems differ")
    assert reasons["empty-dir"].startswith("no config.json")
    assert len(boards) == 1
    board = boards[0]
    assert {r.label for r in board.rows} == {"uniform", "counterfactual"}
    assert {x.run_id for x in board.left_out} == set(reasons)
    md = render_markdown(board)
    for run_id in reasons:
        assert f"- `{run_id}`: " in md


def test_mixed_budgets_within_a_coarser_group_are_left_out(tmp_path: Path) -> None:
    write_scenario(tmp_path, methods=["uniform", "counterfactual"])
    write_run(tmp_path, method="random", seed=0, evals={0: vec(2, N_LOOP), 6: vec(5, N_LOOP)},
              steps=6, step_flops=100.0, step_seconds=1.0, final=vec(6, N_FINAL))
    assert len(build_leaderboards(tmp_path)) == 2  # default: budgets make separate boards
    boards, left_out = build_all(tmp_path, group_by=["task", "model"])
    assert len(boards) == 1
    assert [x.run_id for x in left_out] == ["arith-random-s0"]
    assert "budget=steps=6 (group: steps=4)" in left_out[0].reason
    assert "share these config fields: `task`, `model`" in render_markdown(boards[0])


def test_boards_differing_in_preset_get_distinct_slugs(tmp_path: Path) -> None:
    for preset in ("dapo", "grpo"):
        write_run(tmp_path, method="uniform", seed=0, evals={0: vec(1, 4), 2: vec(2, 4)},
                  steps=2, step_flops=1.0, step_seconds=1.0, preset=preset,
                  run_id=f"u-{preset}")
    slugs = [b.slug for b in build_leaderboards(tmp_path)]
    assert len(set(slugs)) == 2
    assert all(s.startswith("arith-micro-arith-steps-2-") for s in slugs)
    assert any("preset-grpo" in s for s in slugs)


def test_task_filter(scenario: Path) -> None:
    assert build_leaderboards(scenario, task="gsm8k") == []
    assert len(build_leaderboards(scenario, task="arith")) == 1


def test_plots_are_written_and_deterministic(board: Board, tmp_path: Path) -> None:
    first = plot_board(board, tmp_path / "a")
    second = plot_board(board, tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert a.read_bytes() == b.read_bytes()


# ----------------------------------------------------------------------------- CLI


def test_cli_bad_runs_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leaderboard", "--runs", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "harness leaderboard: error:" in err and "does not exist" in err


def test_cli_writes_boards(scenario: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lb"
    assert main(["leaderboard", "--runs", str(scenario), "--out", str(out),
                 "--bootstrap", "2000"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["arith-micro-arith-steps-4-acc-flops.png",
                     "arith-micro-arith-steps-4-acc-step.png", "arith-micro-arith-steps-4.md"]
    assert f"wrote {out / 'arith-micro-arith-steps-4.md'}" in capsys.readouterr().out
    assert "B = 2000" in (out / "arith-micro-arith-steps-4.md").read_text()


def test_cli_no_board_exits_1_and_bad_options_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs, method="uniform", seed=0, evals={0: [1]}, steps=1, step_flops=1.0,
              step_seconds=1.0, done=False)
    assert main(["leaderboard", "--runs", str(runs), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "left out arith-uniform-s0: no done.json" in err and "no leaderboard" in err
    assert main(["leaderboard", "--runs", str(runs), "--min-seeds", "0"]) == 2
    assert main(["leaderboard", "--runs", str(runs), "--group-by", "task,colour"]) == 2
    assert "unknown field(s) colour" in capsys.readouterr().err


def test_publish_writes_index_and_includes_claims(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "leaderboards"
    out.mkdir()
    (out / "notes.md").write_text("# hand-written, not a board\n")
    args = ["publish", "--runs", str(scenario), "--out", str(out), "--no-plots",
            "--bootstrap", "500"]
    assert main(args) == 0
    index = (out / "README.md").read_text()
    assert "[arith · micro-arith · steps=4](arith-micro-arith-steps-4.md)" in index
    assert "counterfactual (n=3)" in index and "notes.md" not in index
    assert "_claims.md -->" not in index.split("\n", 1)[1]  # no claims section without file
    (out / "_claims.md").write_text("| claim | reproduced? |\n|---|---|\n")
    assert main(args) == 0
    index = (out / "README.md").read_text()
    assert "<!-- BEGIN _claims.md" in index and "| claim | reproduced? |" in index


def _baseline_file(path: Path, *, task: str = "arith", ids: list[str], correct: list[int],
                   task_params: dict | None = None) -> Path:
    import json

    path.write_text(json.dumps({
        "task": task, "model": "smollm2-135m", "accuracy": sum(correct) / len(correct),
        "n": len(ids), "ids": ids, "correct": correct,
        "settings": {"seconds": 12.3, "task_params": task_params or {}},
    }))
    return path


def test_baselines_are_shown_on_the_boards_of_their_task(
    scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The board's eval set is final.json's f0..f11. This baseline covers 6 of them (3 right)
    # plus ids the board does not have, which must not count.
    part = _baseline_file(tmp_path / "part.json", ids=[f"f{i}" for i in range(6)] + ["x1"],
                          correct=[1, 1, 1, 0, 0, 0, 1])
    other = _baseline_file(tmp_path / "gsm.json", task="gsm8k", ids=["f0"], correct=[1])
    params = _baseline_file(tmp_path / "params.json", ids=["f0"], correct=[1],
                            task_params={"n_steps": 3})
    out = tmp_path / "lb"
    argv = ["leaderboard", "--runs", str(scenario), "--out", str(out), "--no-plots",
            "--bootstrap", "200"]
    for path in (part, other, params):
        argv += ["--baseline", str(path)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"baseline {other} is on no board: task gsm8k ≠ arith" in err
    assert f"baseline {params} is on no board: task params {{'n_steps': 3}} ≠ {{}}" in err
    md = (out / "arith-micro-arith-steps-4.md").read_text()
    assert ("`smollm2-135m` before training: 50.0% on the board's problems (the 6 of the "
            "board's 12 it has), lm-eval (`part.json`, 12 s)") in md
    assert str(tmp_path) not in md  # file names only, never this machine's paths


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{", "corrupt JSON"),
    ('{"task": "arith", "accuracy": 0.5}', "needs 'task', 'ids' and 'correct'"),
    ('{"task": "arith", "accuracy": 0.5, "ids": ["a"], "correct": [2]}', "0/1 values"),
])
def test_bad_baseline_file_exits_2(scenario: Path, tmp_path: Path, content: str | None,
                                   message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "lb"
    assert main(["leaderboard", "--runs", str(scenario), "--out", str(out),
                 "--baseline", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written
