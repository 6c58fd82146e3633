"""genlab-compare: pure functions on hand-made frames and runs, and the CLI on a real sweep."""

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from genlab.cli import compare as cli
from genlab.comparison import plots as P
from genlab.comparison import runs as R
from genlab.comparison import tables as T
from tests.conftest import BIN, TINY, cli_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LRS = (0.0001, 0.0002)
SEEDS = (1, 2)


# ---------------------------------------------------------------- hand-made runs on disk


def write_run(
    path: Path,
    overrides: list[str],
    metrics: dict[str, list[float | None]] | None,
    config: dict | None = None,
    choices: dict | None = None,
) -> Path:
    """A run directory as genlab-train leaves it: .hydra/{config,overrides,hydra}.yaml + csv."""
    (path / ".hydra").mkdir(parents=True)
    config = {
        "seed": 0,
        "optimized_metric": None,
        "model": {"_target_": "genlab.vae.VAE", "beta": 1.0},
        # what Hydra writes: resolvable only inside Hydra
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
        **(config or {}),
    }
    OmegaConf.save(OmegaConf.create(config), path / ".hydra/config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), path / ".hydra/overrides.yaml")
    choices = {"model": "vae", "debug": "tiny", "hydra/launcher": "basic", **(choices or {})}
    hydra = {"hydra": {"runtime": {"choices": choices}}}
    OmegaConf.save(OmegaConf.create(hydra), path / ".hydra/hydra.yaml")
    if metrics is not None:
        (path / "csv").mkdir()
        n = max(len(v) for v in metrics.values())
        frame = pd.DataFrame({"epoch": range(n), "step": [4 * (i + 1) - 1 for i in range(n)]})
        for k, v in metrics.items():
            frame[k] = v
        frame.to_csv(path / "csv/metrics.csv", index=False)
    return path


@pytest.fixture
def vae_sweep(tmp_path: Path) -> Path:
    """beta in {1, 4} x seed in {0, 1}, logging val/elbo (maximised) and val/mse."""
    sweep = tmp_path / "sweep"
    elbos = {
        0: [-300.0, -250.0, -260.0],
        1: [-310.0, -240.0, -245.0],
        2: [-200.0, -150.0, -120.0],
        3: [-210.0, -140.0, -130.0],
    }
    for job, (beta, seed) in enumerate([(1, 0), (1, 1), (4, 0), (4, 1)]):
        write_run(
            sweep / str(job),
            ["debug=tiny", f"model.beta={beta}", f"seed={seed}"],
            {"val/elbo": elbos[job], "val/mse": [0.3, 0.2, 0.1]},
            config={"seed": seed, "model": {"_target_": "genlab.vae.VAE", "beta": float(beta)}},
        )
    # genlab-eval writes .hydra/ below a run too, but no csv/metrics.csv: not a run
    write_run(sweep / "0" / "eval" / "2024-01-01_00-00-00", ["ckpt_path=x"], None)
    return sweep


# ---------------------------------------------------------------- pure functions


def test_parse_overrides():
    got = R.parse_overrides(["model=vae", "+x.y=1", "++trainer.a=b=c", "~callbacks.lr", "seed=3"])
    assert got == {
        "model": "vae",
        "x.y": "1",
        "trainer.a": "b=c",
        "callbacks.lr": None,
        "seed": "3",
    }


def test_flatten_keeps_lists_and_interpolations():
    node = {"a": {"b": 1, "c": [0.5, 0.9], "d": {}}, "p": "${hydra:runtime.output_dir}"}
    assert R.flatten(node) == {"a.b": 1, "a.c": [0.5, 0.9], "a.d": {}, "p": node["p"]}


def test_differing_keys():
    params = [{"lr": "1", "seed": "1", "x": "a"}, {"lr": "2", "seed": "1", "x": "a"}, {"lr": "1"}]
    # a key missing in one run differs from a present one
    assert T.differing_keys(params) == ["lr", "seed", "x"]
    assert T.differing_keys(params[:2]) == ["lr"]
    assert T.differing_keys([{"a": 1}]) == []


def test_final_and_best():
    values = pd.Series([np.nan, 3.0, np.nan, 1.0, 2.0])
    assert T.final_and_best(values, "min") == (2.0, 1.0)
    assert T.final_and_best(values, "max") == (2.0, 3.0)
    final, best = T.final_and_best(pd.Series([np.nan]), "min")
    assert np.isnan(final) and np.isnan(best)


def test_metric_mode():
    assert T.metric_mode("val/elbo") == "max"
    assert T.metric_mode("val/is") == "max"
    assert T.metric_mode("val/fid") == "min"
    assert T.metric_mode("val/fid", "max") == "max"


def test_defaults_match_training():
    from genlab.models.gan import GAN
    from genlab.models.vae import VAE
    from genlab.training import MAXIMISED

    assert T.MAXIMISED == MAXIMISED
    assert T.MODEL_METRICS["GAN"] == (GAN.default_monitor, GAN.fallback_monitor)
    assert T.MODEL_METRICS["VAE"] == (VAE.default_monitor,)


def per_run_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run": ["0", "1", "2", "3", "4"],
            "lr": ["1e-4", "1e-4", "2e-4", "2e-4", "2e-4"],
            "seed": ["1", "2", "1", "2", "3"],
            "val/fid final": [10.0, 12.0, 20.0, 23.0, 29.0],
            "val/fid best": [9.0, 11.0, 19.0, np.nan, 28.0],
        }
    )


def test_aggregate_groups_runs_that_differ_only_in_seed():
    table = T.aggregate(per_run_frame(), ["lr", "seed"])
    assert list(table.columns) == [
        "lr", "n", "runs", "val/fid final", "val/fid final std", "val/fid best", "val/fid best std",
    ]  # fmt: skip
    assert table["lr"].tolist() == ["1e-4", "2e-4"]
    assert table["n"].tolist() == [2, 3]
    assert table["runs"].tolist() == [("0", "1"), ("2", "3", "4")]
    assert table["val/fid final"].tolist() == pytest.approx([11.0, 24.0])
    expected_std = [np.std([10, 12], ddof=1), np.std([20, 23, 29], ddof=1)]
    assert table["val/fid final std"].tolist() == pytest.approx(expected_std)
    # a run that never logged the metric does not drag the mean to NaN
    assert table["val/fid best"].tolist() == pytest.approx([10.0, 23.5])


def test_aggregate_without_other_keys_is_one_group():
    table = T.aggregate(per_run_frame().drop(columns="lr"), ["seed"])
    assert table["n"].tolist() == [5]
    assert table["val/fid final"].iloc[0] == pytest.approx(np.mean([10, 12, 20, 23, 29]))
    # runs that differ in nothing at all are one group too
    assert T.aggregate(per_run_frame().drop(columns=["lr", "seed"]), [])["n"].tolist() == [5]


def test_aggregate_single_runs_have_no_std():
    table = T.aggregate(per_run_frame().iloc[1:3], ["lr", "seed"])
    assert table["n"].tolist() == [1, 1]
    assert table["val/fid final"].tolist() == [12.0, 20.0]
    assert table["val/fid final std"].isna().all()


def test_display_table_and_markdown():
    per_run = per_run_frame()
    comparison = T.Comparison(
        runs=[],
        metrics=["val/fid"],
        modes={"val/fid": "min"},
        keys=["lr", "seed"],
        per_run=per_run,
        table=T.aggregate(per_run.iloc[:3], ["lr", "seed"]),
    )
    shown = T.display_table(comparison)
    assert list(shown.columns) == ["lr", "n", "val/fid final", "val/fid best (min)", "runs"]
    assert shown.iloc[0].tolist() == ["1e-4", "2", "11 ± 1.4", "10 ± 1.4", "0 1"]
    assert shown.iloc[1].tolist() == ["2e-4", "1", "20", "19", "2"]
    md = T.markdown(pd.DataFrame({"a|b": ["x|y"], "c": ["1"]})).splitlines()
    assert md == ["| a\\|b | c |", "| --- | --- |", "| x\\|y | 1 |"]


def test_intervals_show_as_plus_minus(tmp_path: Path):
    """metrics.jackknife's val/fid_ci_low/high: the last interval's half width, beside the value."""
    for seed, (low, high) in enumerate([(9.0, 11.0), (19.0, 23.0)]):
        write_run(
            tmp_path / f"run{seed}",
            [f"model.beta={seed + 1}"],
            {"val/fid": [30.0, 10.0 + seed], "val/fid_ci_low": [None, low],
             "val/fid_ci_high": [None, high]},
            config={"model": {"_target_": "genlab.vae.VAE", "beta": float(seed + 1)}},
        )  # fmt: skip
    comparison = T.compare(tmp_path, ["val/fid"])
    shown = T.display_table(comparison)
    assert shown["val/fid 95% CI"].tolist() == ["± 1", "± 2"]
    assert T.csv_table(comparison)["val/fid ci"].tolist() == [1.0, 2.0]
    # no interval logged: no column
    assert "val/fid 95% CI" not in T.display_table(T.compare(tmp_path, ["val/fid_ci_low"]))


def test_plot_file_names_are_safe():
    assert P.plot_file(Path("out"), "val/fid") == Path("out/compare_val_fid.png")
    assert P.plot_file(Path("out"), "lr-Adam 1") == Path("out/compare_lr-Adam_1.png")


# ---------------------------------------------------------------- runs on disk


def test_compare_vae_sweep(vae_sweep: Path):
    result = T.compare(vae_sweep)
    assert [r.name for r in result.runs] == ["0", "1", "2", "3"]  # the eval dir is not a run
    assert result.metrics == ["val/elbo"] and result.modes == {"val/elbo": "max"}
    assert result.keys == ["model.beta", "seed"]  # debug=tiny is the same everywhere
    assert result.per_run["model.beta"].tolist() == ["1.0", "1.0", "4.0", "4.0"]
    table = result.table
    assert table["model.beta"].tolist() == ["1.0", "4.0"]
    assert table["n"].tolist() == [2, 2]
    assert table["val/elbo final"].tolist() == pytest.approx([-252.5, -125.0])
    assert table["val/elbo best"].tolist() == pytest.approx([-245.0, -125.0])  # maxima
    assert table["val/elbo best std"].tolist() == pytest.approx([np.std([-250, -240], ddof=1)] * 2)
    # --mode min turns best into the minimum
    low = T.compare(vae_sweep, ["val/elbo", "val/mse"], "min").table
    assert low["val/elbo best"].tolist() == pytest.approx([-305.0, -205.0])
    assert low["val/mse best"].tolist() == pytest.approx([0.1, 0.1])


def test_default_metric_per_model(tmp_path: Path):
    gan = {"model": {"_target_": "genlab.gan.GAN"}}
    write_run(tmp_path / "a", ["seed=1"], {"val/fid": [5.0], "val/swd": [0.5]}, gan)
    write_run(tmp_path / "b", ["seed=2"], {"val/swd": [0.4], "train/d_loss": [1.0]}, gan)
    runs = R.load_runs(tmp_path)
    # FID where it was computed, SWD where FID was off
    assert T.default_metrics(runs) == ["val/fid", "val/swd"]
    assert T.default_metrics(runs[1:]) == ["val/swd"]
    runs[1].config["optimized_metric"] = "train/d_loss"
    assert T.default_metrics(runs[1:]) == ["train/d_loss"]
    write_run(tmp_path / "c", [], {"val/elbo": [-1.0], "val/fid": [3.0]})
    assert T.default_metrics(R.load_runs(tmp_path / "c")) == ["val/elbo"]


def test_keys_read_from_config_and_group_choices(tmp_path: Path):
    write_run(tmp_path / "0", ["model.beta=4"], {"val/elbo": [1.0]}, {"model": {"beta": 4.0}})
    # no override here: the value comes from the run's config
    write_run(tmp_path / "1", [], {"val/elbo": [2.0]}, {"model": {"beta": 1.0}})
    write_run(tmp_path / "2", ["model=gan"], {"val/elbo": [3.0]}, choices={"model": "gan"})
    result = T.compare(tmp_path)
    assert result.keys == ["model.beta", "model"]
    assert result.per_run["model.beta"].tolist() == ["4.0", "1.0", "1.0"]
    assert result.per_run["model"].tolist() == ["vae", "vae", "gan"]


def test_without_overrides_the_configs_are_diffed(tmp_path: Path):
    for name, beta in [("a", 1.0), ("b", 2.0)]:
        cfg = {"model": {"_target_": "genlab.vae.VAE", "beta": beta}}
        write_run(tmp_path / name, [], {"val/elbo": [beta]}, cfg)
    result = T.compare(tmp_path)
    assert result.keys == ["model.beta"]
    assert result.table["model.beta"].tolist() == ["1.0", "2.0"]


def test_runs_sort_naturally(tmp_path: Path):
    for job in (10, 9, 2):
        write_run(tmp_path / str(job), [f"seed={job}"], {"val/elbo": [float(job)]})
    assert [r.name for r in R.load_runs(tmp_path)] == ["2", "9", "10"]
    # a run directory itself is a (one-run) comparison
    assert [r.name for r in R.load_runs(tmp_path / "9")] == ["9"]


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err.strip()


def test_errors_are_one_line(tmp_path: Path, capsys):
    assert one_line_error(capsys, [str(tmp_path)]) == (
        f"genlab-compare: error: {tmp_path}: no genlab runs found (no .hydra/config.yaml below it)"
    )
    assert one_line_error(capsys, [str(tmp_path / "nope")]).endswith("nope: no such directory")
    write_run(tmp_path / "w", ["logger=wandb"], None)
    assert "none of its 1 run(s) has csv/metrics.csv" in one_line_error(capsys, [str(tmp_path)])
    write_run(tmp_path / "r", [], {"val/elbo": [1.0], "val/mse": [0.1]})
    err = one_line_error(capsys, [str(tmp_path), "--metric", "val/fid"])
    available = "(available: val/elbo, val/mse)"
    assert err == f"genlab-compare: error: --metric val/fid: no run logged it {available}"
    write_run(tmp_path / "s", [], {"train/loss": [1.0]}, {"model": {"_target_": "my.Model"}})
    assert "no run logged val/fid, val/swd, val/elbo" in one_line_error(
        capsys, [str(tmp_path / "s")]
    )


def test_main_writes_outputs(vae_sweep: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    cli.main([str(vae_sweep), "--out", str(out), "--format", "md", "--metric", "val/mse"])
    stdout = capsys.readouterr().out
    assert stdout == (out / "compare.md").read_text()
    assert (
        stdout.splitlines()[0] == "| model.beta | n | val/mse final | val/mse best (min) | runs |"
    )
    assert sorted(p.name for p in out.iterdir()) == ["compare.md"]  # what --format md names
    cli.main([str(vae_sweep), "--format", "csv"])  # default --out is the compared directory
    stdout = capsys.readouterr().out
    assert stdout == (vae_sweep / "compare.csv").read_text()
    assert pd.read_csv(vae_sweep / "compare.csv")["n"].tolist() == [2, 2]


# ---------------------------------------------------------------- the CLI on a real sweep


def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2x2 sweep (lr x seed) trained once per session; the notebook test reuses it."""
    base = tmp_path_factory.getbasetemp()
    sweep, done = base / "tiny_sweep", base / "tiny_sweep.done"
    if not done.exists():
        work = tmp_path_factory.mktemp("sweep_cwd")
        lrs = ",".join(str(lr) for lr in LRS)
        seeds = ",".join(str(s) for s in SEEDS)
        proc = subprocess.run(
            [str(BIN / "genlab-train"), "-m", *TINY, f"model.optimizer_g.lr={lrs}",
             f"seed={seeds}", f"hydra.sweep.dir={sweep}"],
            cwd=work, env=cli_env(work), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        done.touch()
    return sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return tiny_sweep(tmp_path_factory)


def run_compare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = cli_env(cwd)  # no COLUMNS, no terminal: a batch log; nothing may be cut at 80
    env.pop("COLUMNS", None)
    return subprocess.run(
        [str(BIN / "genlab-compare"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def expected_from_csvs(sweep: Path) -> dict[float, dict[str, tuple[float, float]]]:
    """Mean and std of final and best val/swd per lr, straight from each job's metrics.csv."""
    values: dict[float, dict[str, list[float]]] = {}
    for job in sweep.iterdir():
        if not (job / "csv/metrics.csv").is_file():
            continue
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(job / ".hydra/overrides.yaml"))
        swd = pd.read_csv(job / "csv/metrics.csv")["val/swd"].dropna()
        assert len(swd) == 2  # one value per epoch
        group = values.setdefault(
            float(overrides["model.optimizer_g.lr"]), {"final": [], "best": []}
        )
        group["final"].append(swd.iloc[-1])
        group["best"].append(swd.min())
    return {
        lr: {k: (np.mean(v), np.std(v, ddof=1)) for k, v in stats.items()}
        for lr, stats in values.items()
    }


@pytest.mark.slow
def test_wide_table_is_not_cut_in_a_log(sweep: Path, tmp_path: Path):
    metrics = ["val/swd", "train/d_loss", "train/g_loss"]
    proc = run_compare(str(sweep), *(f"--metric={m}" for m in metrics), "--out",
                       str(tmp_path), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header = next(ln for ln in proc.stdout.splitlines() if "model.optimizer_g.lr" in ln)
    assert all(f"{m} final" in header for m in metrics), proc.stdout
    assert "…" not in proc.stdout


@pytest.mark.slow
def test_cli_on_sweep(sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = run_compare(str(sweep), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = expected_from_csvs(sweep)
    assert sorted(expected) == list(LRS)

    # the terminal table: one row per lr, seeds folded into n
    lines = proc.stdout.splitlines()
    header = next(ln for ln in lines if "model.optimizer_g.lr" in ln)
    assert "val/swd final" in header and "val/swd best (min)" in header
    assert "seed" not in header
    rows = [ln for ln in lines if ln.startswith("│")]
    assert len(rows) == 2
    for row, lr in zip(rows, LRS, strict=True):
        cells = [c.strip() for c in row.strip("│").split("│")]
        final, best = expected[lr]["final"], expected[lr]["best"]
        assert cells == [
            str(lr), "2", f"{final[0]:.4g} ± {final[1]:.2g}", f"{best[0]:.4g} ± {best[1]:.2g}",
            "0 1" if lr == LRS[0] else "2 3",
        ]  # fmt: skip

    # compare.csv: the same numbers at full precision
    table = pd.read_csv(out / "compare.csv")
    assert "seed" not in table.columns
    assert table["model.optimizer_g.lr"].tolist() == list(LRS)
    assert table["n"].tolist() == [2, 2]
    for _, row in table.iterrows():
        want = expected[row["model.optimizer_g.lr"]]
        assert row["val/swd final"] == pytest.approx(want["final"][0], rel=1e-9)
        assert row["val/swd final std"] == pytest.approx(want["final"][1], rel=1e-9)
        assert row["val/swd best"] == pytest.approx(want["best"][0], rel=1e-9)
        assert row["val/swd best std"] == pytest.approx(want["best"][1], rel=1e-9)

    md = (out / "compare.md").read_text().splitlines()
    assert md[0] == "| model.optimizer_g.lr | n | val/swd final | val/swd best (min) | runs |"
    assert len(md) == 4

    png = out / "compare_val_swd.png"
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
    with Image.open(png) as im:
        assert im.size == (700, 450)
        pixels = {tuple(p) for p in np.asarray(im.convert("RGB")).reshape(-1, 3)}
    # one colour per lr group: matplotlib's C0 (blue) and C1 (orange) lines are both drawn
    assert (31, 119, 180) in pixels and (255, 127, 14) in pixels
    assert proc.stderr.strip() == (
        f"wrote {out}/compare.csv, {out}/compare.md, {out}/compare_val_swd.png"
    )


@pytest.mark.slow
def test_cli_on_one_run_and_other_metrics(sweep: Path, tmp_path: Path):
    proc = run_compare(
        str(sweep / "2"), "--metric", "train/g_loss", "--metric", "val/swd", "--x", "epoch",
        "--out", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "compare.csv")
    assert list(table.columns[:2]) == ["n", "runs"] and table["n"].tolist() == [1]
    g_loss = pd.read_csv(sweep / "2/csv/metrics.csv")["train/g_loss"].dropna()
    assert table["train/g_loss final"].iloc[0] == pytest.approx(g_loss.iloc[-1])
    assert table["train/g_loss best"].iloc[0] == pytest.approx(g_loss.min())
    assert (tmp_path / "compare_train_g_loss.png").stat().st_size > 10_000
    assert (tmp_path / "compare_val_swd.png").stat().st_size > 10_000


def test_cli_empty_dir(tmp_path: Path):
    proc = run_compare(str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    message = f"{tmp_path}: no genlab runs found (no .hydra/config.yaml below it)"
    assert proc.stderr == f"genlab-compare: error: {message}\n"
    assert proc.stdout == ""


# ---------------------------------------------------------------- curves on a common axis


def test_group_curve_is_the_seed_mean_and_std_on_shared_x():
    a = pd.Series([1.0, 3.0], index=[16, 32])
    b = pd.Series([3.0, 5.0], index=[16, 32])
    curve = P.group_curve([a, b])
    assert curve.index.tolist() == [16, 32]
    assert curve["mean"].tolist() == [2.0, 4.0] and curve["n"].tolist() == [2, 2]
    assert curve["std"].tolist() == pytest.approx([2**0.5, 2**0.5])  # ddof=1
    # x values of another run: interpolated inside its range, absent outside it
    d = pd.Series([0.0, 2.0], index=[24, 40])
    c = P.group_curve([a, d])
    assert c.index.tolist() == [16, 24, 32, 40]
    assert c["n"].tolist() == [1, 2, 2, 1]
    # at 24: a is 2 (halfway), d is 0; at 32: a is 3, d is 1 (halfway)
    assert c["mean"].tolist() == pytest.approx([1.0, 1.0, 2.0, 2.0])


def _axis_runs(root: Path) -> None:
    """Two seeds of one setting logging val/elbo at 32 images a step (step and x differ)."""
    for seed, elbo in ((0, [-300.0, -200.0, -150.0]), (1, [-280.0, -220.0, -130.0])):
        write_run(root / str(seed), [f"seed={seed}"],
                  {"val/elbo": elbo, "trainer/images_seen": [128.0, 256.0, 384.0]},
                  config={"seed": seed})  # fmt: skip


@pytest.mark.parametrize("x", ["images_seen", "step", "epoch"])
def test_plot_draws_the_chosen_axis_with_a_std_band(tmp_path: Path, x: str):
    from matplotlib.figure import Figure

    _axis_runs(tmp_path)
    comparison = T.compare(tmp_path, ["val/elbo"])
    ax = Figure().add_subplot()
    P.plot_curves(ax, comparison, "val/elbo", x, per_run=True)
    mean, *per_run = ax.lines
    want_x = {"images_seen": [128, 256, 384], "step": [3, 7, 11], "epoch": [0, 1, 2]}[x]
    assert mean.get_xdata().tolist() == want_x
    assert mean.get_ydata().tolist() == [-290.0, -210.0, -140.0]
    assert [ln.get_ydata().tolist() for ln in per_run] == [
        [-300.0, -200.0, -150.0], [-280.0, -220.0, -130.0],
    ]  # fmt: skip
    (band,) = ax.collections  # fill_between: mean ± std, std = |a - b| / sqrt(2)
    vertices = band.get_paths()[0].vertices
    assert set(vertices[:, 0]) == set(want_x)
    std = np.array([20.0, 20.0, 20.0]) / 2**0.5
    assert vertices[:, 1].min() == pytest.approx(-290.0 - std[0])
    assert vertices[:, 1].max() == pytest.approx(-140.0 + std[2])
    assert ax.get_xlabel().startswith(x)


def test_an_axis_no_run_logged_is_one_line(tmp_path: Path, capsys):
    write_run(tmp_path / "r", [], {"val/elbo": [1.0]})  # trained before genlab logged the axes
    err = one_line_error(capsys, [str(tmp_path), "--x", "images_seen"])
    assert err.startswith(
        "genlab-compare: error: --x images_seen: no run logged trainer/images_seen"
    )


def test_runs_with_only_wandb_offline_files(tmp_path: Path, monkeypatch):
    """No CSV: the history comes from W&B's offline run files, through W&B's reader."""
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sweep = tmp_path / "sweep"
    for job, (lr, seed) in enumerate([(1e-4, 0), (1e-4, 1), (2e-4, 0)]):
        config = {"seed": seed, "model": {"_target_": "genlab.gan.GAN"}}
        run_dir = write_run(sweep / str(job), [f"model.lr={lr}", f"seed={seed}"], None, config)
        run = wandb.init(project="p", dir=str(run_dir))
        for i in range(3):
            images = 64.0 * (i + 1) * (job + 1)  # job 1 and 2 see more images per step
            run.log({"trainer/global_step": i, "trainer/images_seen": images,
                     "val/swd": 1.0 / (i + 1) + job, "epoch": i})  # fmt: skip
        run.log({"images/samples": wandb.Image(np.zeros((4, 4, 3), np.uint8))})
        run.finish()
    assert not list(sweep.rglob("metrics.csv"))
    comparison = T.compare(sweep)
    assert comparison.metrics == ["val/swd"]
    table = comparison.table
    assert table["n"].tolist() == [2, 1]
    assert table["val/swd final"].tolist() == pytest.approx([1 / 3 + 0.5, 1 / 3 + 2])
    assert table["val/swd best"].tolist() == pytest.approx([1 / 3 + 0.5, 1 / 3 + 2])
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    P.plot_curves(ax, comparison, "val/swd", "images_seen")
    first, second = ax.lines
    # seeds 0 and 1 of lr=1e-4 saw 64 and 128 images a step: interpolated onto both grids
    assert first.get_xdata().tolist() == [64, 128, 192, 256, 384]
    assert second.get_xdata().tolist() == [192, 384, 576]
    P.write_outputs(comparison, tmp_path / "o", "images_seen")
    assert (tmp_path / "o" / "compare_val_swd.png").read_bytes().startswith(PNG_MAGIC)


# ---------------------------------------------------------------- what the CLI writes where


@pytest.mark.parametrize(
    ("form", "files"),
    [
        ("table", ["compare.csv", "compare.md", "compare_val_mse.png"]),
        ("md", ["compare.md"]),
        ("csv", ["compare.csv"]),
    ],
)
def test_each_format_writes_only_what_it_names(vae_sweep: Path, tmp_path: Path, form, files):
    out = tmp_path / "out"
    proc = run_compare(str(vae_sweep), "--metric", "val/mse", "--format", form, "--out", str(out),
                       cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == files
    assert proc.stderr.strip() == "wrote " + ", ".join(f"{out}/{f}" for f in files)
    if form != "table":  # what stdout shows is the file
        assert proc.stdout == (out / files[0]).read_text()


def test_a_second_compare_into_the_same_out_is_refused_without_overwrite(
    vae_sweep: Path, tmp_path: Path
):
    out = tmp_path / "out"
    first = run_compare(str(vae_sweep), "--metric", "val/mse", "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = run_compare(str(vae_sweep), "--metric", "val/elbo", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line == (
        f"genlab-compare: error: --out {out} already holds compare.csv, compare.md from an "
        "earlier comparison: add --overwrite to replace them, or choose another --out"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    # files another format left there are not in the way
    md = run_compare(str(vae_sweep), "--format", "md", "--out", str(tmp_path / "csv_only"),
                     cwd=tmp_path)  # fmt: skip
    assert md.returncode == 0, md.stderr
    again = run_compare(str(vae_sweep), "--format", "csv", "--out", str(tmp_path / "csv_only"),
                        cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    proc = run_compare(str(vae_sweep), "--metric", "val/elbo", "--out", str(out), "--overwrite",
                       cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "val/elbo final" in pd.read_csv(out / "compare.csv").columns
    assert (out / "compare_val_mse.png").read_bytes() == before["compare_val_mse.png"]
