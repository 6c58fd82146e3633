"""results.json -> results.md: the tables a person reads.

    python experiments/benchmarks/report.py [results.json]   # prints results.md

The machine, memory (4) and start-up (6) sections are here; the others are in report_training.py,
report_eval.py and report_data.py.
"""

import json
import sys
from pathlib import Path

from md_tables import fmt, table, tidy
from report_data import data_section, prepared_section, scaling_section
from report_eval import eval_section
from report_training import training_section


def markdown(r: dict) -> str:
    """The whole of results.md."""
    m = r["machine"]
    out = [f"# genlab benchmarks ({r['mode']} run)\n"]
    out.append(
        "Written by `python experiments/benchmarks/run.py"
        + (" --quick" if r["mode"] == "quick" else "")
        + f"` in {r['total_s'] / 60:.1f} min. Method: experiments/benchmarks/README.md.\n"
    )
    out.append("## Machine\n")
    gpu = m["gpu"] or "none"
    out.append(
        table(
            ["", ""],
            [
                ["date", m["date_utc"]],
                ["CPU", f"{m['cpu']}, {m['cores']} logical cores"],
                ["RAM", f"{m['ram_gb']} GB"],
                ["GPU", gpu],
                ["python / torch", f"{m['python']} / {m['torch']}"],
                ["pytorch_lightning", m["pytorch_lightning"]],
                ["torchmetrics / torch-fidelity", f"{m['torchmetrics']} / {m['torch_fidelity']}"],
                ["torch threads by default", m["torch_default_threads"]],
                [
                    "load average (1, 5, 15 min) at start / end",
                    f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])} / "
                    f"{' '.join(f'{x:.2f}' for x in m['loadavg_end'])}",
                ],
            ],
        )
    )
    if max(m["loadavg_start"][0], m["loadavg_end"][0]) > 0.5:
        out.append(
            "The machine was shared while this ran (load average above): absolute numbers are "
            "lower than on an idle machine; each genlab/hand-written pair ran back to back, "
            "alternating, to keep their ratio fair.\n"
        )

    out.append(training_section(r))
    out.append(eval_section(r))
    out.append(data_section(r))
    out.append(prepared_section(r))
    out.append(memory_section(r))
    out.append(scaling_section(r))
    out.append(startup_section(r))
    return tidy("".join(out))


def memory_section(r: dict) -> str:
    """Section 4: the peak memory of every process the suite started."""
    m, tr, d = r["machine"], r["training"], r["data"]
    c, f, k = r["eval"]["genlab_cold"], r["eval"]["fidelity"], r["eval"]["genlab_cached"]
    out = []
    out.append("## 4. Peak memory\n")
    out.append(
        "RSS peak of each process (`wait4` ru_maxrss) and of its whole process tree "
        "(sampled every 0.25 s: W&B's service process, DataLoader workers). GPU: "
        f"{'nvidia-smi per process' if m['gpu'] else 'no GPU on this machine'}.\n"
    )
    rows = []
    for name, row in tr.items():
        for side in ("genlab", "hand"):
            p = row["reps"][0][side]["process"]
            rows.append(
                [
                    f"{'genlab-train' if side == 'genlab' else 'hand loop'} {name}",
                    fmt(p["peak_rss_mb"]),
                    fmt(p["peak_rss_tree_mb"]),
                    fmt(p["peak_gpu_mb"]),
                ]
            )
    for label, p in [
        ("genlab-eval (cold)", c),
        ("fidelity", f),
        ("genlab-eval -m (cached, sweep)", k["process"]),
        ("data loaders", d["process"]),
        ("genlab-train -m (scaling sweep)", r["scaling"]["process"]),
    ]:
        rows.append(
            [label, fmt(p["peak_rss_mb"]), fmt(p["peak_rss_tree_mb"]), fmt(p["peak_gpu_mb"])]
        )
    out.append(table(["process", "peak RSS MB", "peak tree RSS MB", "peak GPU MB"], rows))
    out.append("\n")
    return "".join(out)


def startup_section(r: dict) -> str:
    """Section 6: help, config printing and config errors, beside the bare imports."""
    st = r.get("startup")
    if not st:
        return ""
    out = [
        "## 6. Start-up: what a user waits for before training\n\n"
        f"Whole process, wall clock: median of {st['reps']} runs after a warm-up, each command "
        "as a user types it (the error rows exit 2 with one line). None of the genlab rows "
        "imports torch or Lightning (tests/test_startup.py checks that, not the time).\n\n"
    ]
    rows = [
        [f"`{x['command']}`", fmt(x["wall_s"], 2), fmt(x["peak_rss_mb"])] for x in st["commands"]
    ]
    out.append(table(["command", "wall s", "peak RSS MB"], rows))
    f = st["first_step"]
    floor = next((x["wall_s"] for x in st["commands"] if "pytorch_lightning" in x["command"]), None)
    out.append(
        "\nThe default run (`genlab-train trainer.max_steps=2`, W&B offline) to the end of its "
        f"first batch: **{f['first_step_s']:.2f} s**, of which imports, composing and building "
        f"data, model and metrics up to the callbacks {f['imports_compose_build_s']:.2f} s, "
        f"the rest of the build (loggers, Trainer, W&B's run start) "
        f"{f['build_rest_loggers_trainer_s']:.2f} s, and Lightning's fit set-up, the first "
        f"step and the callbacks and loggers after it {f['fit_start_to_first_batch_s']:.2f} s. "
        "The floor, "
        f"`import torch, pytorch_lightning` alone: {fmt(floor, 2)} s.\n"
    )
    return "".join(out)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results.json")
    print(markdown(json.loads(path.read_text())))
