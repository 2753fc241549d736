"""What the driver prints for a training run: one line per round, and the block a job ends with."""

from rayhash.train.progress import format_round, format_summary, merge_workers

ROUND = {
    "round": 4,
    "loss": 1.0,
    "ic": 0.75,
    "fine": 0.25,
    "loss_parts": ["ic", "fine"],
    "e_step_seconds": 2.34,
    "samples_per_second": 812.4,
    "lr": 1e-3,
    "gmm_iters": 12.0,
}


def test_the_round_line_shows_the_loss_terms_e_step_and_throughput():
    line = format_round(ROUND, 15)
    assert line == "round 5/15  loss 1.0000 (ic 0.750, fine 0.250)  E-step 2.3 s  812 samples/s"
    assert "gmm_iters" not in line and "lr" not in line  # only what a person follows a run by
    warmup = format_round({**ROUND, "loss_parts": []}, 15)
    assert "()" not in warmup and warmup.startswith("round 5/15  loss 1.0000  E-step")


def test_workers_losses_are_averaged_and_rank_0_speaks_for_the_rest():
    other = {**ROUND, "loss": 3.0, "ic": 2.75, "fine": 0.25, "e_step_seconds": 9.0}
    merged = merge_workers([ROUND, other])
    assert (merged["loss"], merged["ic"], merged["fine"]) == (2.0, 1.75, 0.25)
    assert merged["e_step_seconds"] == 2.34  # rank 0's: the E-step is one cluster-wide step
    assert ROUND["loss"] == 1.0  # the workers' own reports are left as they were


def test_the_final_block_ends_with_every_path_written():
    table = "method   bits  mAP@k\ndsch       64  0.5000"
    block = format_summary("done", [table, ""], {"checkpoint": "/runs/a/checkpoint_1", "query grid": "/q.png"})
    lines = block.splitlines()
    assert lines[1].startswith("== done ") and set(lines[-1]) == {"="}
    assert lines.index("written:") > lines.index("dsch       64  0.5000")
    assert lines[-3:-1] == ["  checkpoint  /runs/a/checkpoint_1", "  query grid  /q.png"]
