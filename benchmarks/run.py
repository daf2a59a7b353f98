"""Benchmarks (issue 7): what a gradient-health check costs against the least it can cost, measured in one run.

    python benchmarks/run.py              # default sizes: about a minute on 2 quiet cores
    python benchmarks/run.py --rows 1,6   # only some groups of rows
    python benchmarks/run.py --quick      # tiny sizes: shows that every row runs; its timings mean nothing
    python benchmarks/run.py --clock cpu  # CPU time instead of wall time: for a machine shared with other jobs

Every row is a ratio against a baseline measured in the same process and run: each side warms up, then rounds run
both sides back to back (time.perf_counter, or getrusage with --clock cpu), and the ratio is the median over rounds.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

from pytest_gradhealth import assert_finite_gradients, assert_no_exploding, assert_no_vanishing, probe
from pytest_gradhealth.recording import observe

MAX_REPEATS = 200
HEAVY_MODULES = ("torch", "numpy", "tabulate", "matplotlib")


@dataclass(frozen=True)
class Sizes:
    """What to measure, and how long to spend on each comparison."""

    input_size: int
    batch: int
    small: tuple[int, int]  # (hidden size, seq_len)
    large: tuple[int, int]
    checkpoints: int
    scaling_hidden: int
    scaling_seq_lens: tuple[int, ...]
    seconds_per_row: float  # the repeats of one comparison share this budget...
    min_repeats: int  # ...but never fall below this
    warmup: int
    startup_runs: int
    suite_modules: int
    suite_tests: int

    @property
    def budget(self) -> tuple[float, int, int]:
        """`rounds`' seconds, min_repeats and warmup for one comparison."""
        return self.seconds_per_row, self.min_repeats, self.warmup


DEFAULT = Sizes(
    input_size=32,
    batch=8,
    small=(64, 128),
    large=(256, 512),
    checkpoints=32,
    scaling_hidden=64,
    scaling_seq_lens=(256, 1024, 4096),
    seconds_per_row=2.0,
    min_repeats=5,
    warmup=2,
    startup_runs=10,
    suite_modules=20,
    suite_tests=10,
)
QUICK = Sizes(
    input_size=4,
    batch=2,
    small=(8, 16),
    large=(16, 32),
    checkpoints=4,
    scaling_hidden=8,
    scaling_seq_lens=(16, 64, 256),
    seconds_per_row=0.0,
    min_repeats=1,
    warmup=1,
    startup_runs=1,
    suite_modules=2,
    suite_tests=2,
)


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    group: int
    benchmark: str
    size: str
    baseline: str
    result: str
    goal: str
    met: str

    def markdown(self) -> str:
        cells = (str(self.group), self.benchmark, self.size, self.baseline, self.result, self.goal, self.met)
        return "| " + " | ".join(cells) + " |"


HEADER = ("#", "benchmark", "size", "baseline", "result", "goal", "met")


def ratio_row(group: int, benchmark: str, size: str, baseline: str, ratio: float, limit: float | None) -> Row:
    """A row whose result is a ratio against its baseline; `limit` None marks it as information only."""
    if limit is None:
        return Row(group, benchmark, size, baseline, f"{ratio:.3f}x", "(info)", "-")
    return Row(group, benchmark, size, baseline, f"{ratio:.3f}x", f"<= {limit:.2f}x", "yes" if ratio <= limit else "NO")


# -- measuring ---------------------------------------------------------------------------------------


def cpu_time() -> float:
    """CPU seconds (user and system) of this process's threads and of the child processes it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# What a call's time is read with: wall time, or with --clock cpu `cpu_time`, which waiting for a core that other jobs
# hold does not count: on a shared machine, the steadier of the two.
clock = time.perf_counter


def rounds(fns: list[Callable[[], object]], seconds: float, min_repeats: int, warmup: int) -> list[list[float]]:
    """Seconds per call of each function, round by round: a round runs every function once, back to back and in
    rotating order, so that load from elsewhere on the machine hits all sides of a ratio alike."""
    spent = [0.0] * len(fns)
    for _ in range(warmup):
        for k, fn in enumerate(fns):
            start = clock()
            fn()
            synchronize()
            spent[k] = clock() - start
    repeats = max(min_repeats, min(MAX_REPEATS, int(seconds / sum(spent))))
    times = [[0.0] * len(fns) for _ in range(repeats)]
    for i in range(repeats):
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            start = clock()
            fns[j]()
            synchronize()
            times[i][j] = clock() - start
    return times


def synchronize() -> None:
    """Wait for queued CUDA work, so that a call's time includes its kernels (nothing to wait for on CPU)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_ratio(times: list[list[float]], numerator: int, denominator: int) -> float:
    """The median over rounds of one function's time over another's."""
    return statistics.median(t[numerator] / t[denominator] for t in times)


def paired(candidate: Callable[[], object], baseline: Callable[[], object], sizes: Sizes) -> tuple[float, float]:
    """candidate / baseline (the median of their per-round ratios), and the baseline's median seconds."""
    times = rounds([baseline, candidate], *sizes.budget)
    return median_ratio(times, 1, 0), statistics.median(t[0] for t in times)


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Mute file descriptor 2: torch's profiler prints its start and stop lines there from C++."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated while `fn` runs, above what was live when it started.

    torch's CPU tensors: the allocator's alloc/free events from torch.profiler(profile_memory=True), summed in time
    order. Python objects and numpy arrays (which torch's allocator does not see): tracemalloc's peak. The two heaps
    are disjoint, so their peaks add to an upper bound of the joint peak, measured alike on both sides.
    """
    with stderr_silenced(), torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        tracemalloc.start()
        fn()
        python_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = torch_peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        torch_peak = max(torch_peak, live)
    return torch_peak + python_peak


# -- models and baselines ----------------------------------------------------------------------------


def unrolled_states(cell: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The state of every step of `cell` run over batch-first `x` from a zero state: (h_t,), or an LSTM's (h_t, c_t)."""
    state = None
    states = []
    for t in range(x.shape[1]):
        state = cell(x[:, t], state)
        states.append((state,) if isinstance(state, torch.Tensor) else state)
    return states


class CellLoop(nn.Module):
    """An nn.LSTMCell stepped in a Python loop, returning (batch, seq, hidden)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([h for h, _ in unrolled_states(self.cell, x)], dim=1)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "nn.RNN": partial(nn.RNN, batch_first=True),
    "nn.LSTM": partial(nn.LSTM, batch_first=True),
    "nn.GRU": partial(nn.GRU, batch_first=True),
    "nn.LSTMCell loop": CellLoop,
}


CELLS: dict[type[nn.Module], type[nn.Module]] = {nn.RNN: nn.RNNCell, nn.LSTM: nn.LSTMCell, nn.GRU: nn.GRUCell}


def build(kind: str, sizes: Sizes, hidden: int, device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return MODELS[kind](sizes.input_size, hidden).to(device)


def make_batch(sizes: Sizes, seq_len: int, device: str = "cpu") -> torch.Tensor:
    x = torch.randn(sizes.batch, seq_len, sizes.input_size, generator=torch.Generator().manual_seed(0))
    return x.to(device)


def cell_of(module: nn.RNNBase) -> nn.Module:
    """The nn.RNNCell, nn.LSTMCell or nn.GRUCell with the weights of a one-layer nn.RNN, nn.LSTM or nn.GRU."""
    cell = CELLS[type(module)](module.input_size, module.hidden_size).to(module.weight_hh_l0.device)
    cell.load_state_dict({name.removesuffix("_l0"): value for name, value in module.state_dict().items()})
    return cell


def forward_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The least a probe can cost: one forward, then torch.autograd.grad of a loss on the last output w.r.t. x."""
    leaf = x.detach().requires_grad_(True)
    output = model(leaf)
    y = output[0] if isinstance(output, tuple) else output
    return torch.autograd.grad(y[:, -1].sum(), leaf)[0]


def floor_call(model: nn.Module, sizes: Sizes, seq_len: int, device: str = "cpu") -> np.ndarray:
    """The least a guarded default call must do, written out by hand without the probe's options, checks, tap or
    profile: the parameters saved and compared after, the global generator's state saved and restored, the inputs and
    v drawn from a seeded generator, one forward, autograd.grad from v at the last output, each step's float64 norm
    per sample and their RMS over the batch."""
    parameters = list(model.parameters())
    saved = [p.detach().clone() for p in parameters]
    state = torch.default_generator.get_state()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, seq_len, sizes.input_size, generator=generator).to(device).requires_grad_(True)
    y = model(x)[0][:, -1]
    v = torch.randn(y.shape[-1], generator=generator, dtype=torch.float64)
    v = (v / torch.linalg.vector_norm(v)).to(dtype=y.dtype, device=y.device)
    g = torch.autograd.grad(y, x, v.expand(y.shape).contiguous())[0]
    norms = torch.linalg.vector_norm(g, dim=-1, dtype=torch.float64).cpu().numpy()
    if not all(torch.equal(p, s) for p, s in zip(parameters, saved, strict=True)):
        raise AssertionError("the model changed")
    torch.default_generator.set_state(state)
    return np.sqrt(np.einsum("bt,bt->t", norms, norms) / norms.shape[0])


def widened(model: nn.LSTM) -> nn.LSTM:
    """A one-layer nn.LSTM's copy whose input is wider by hidden_size features with W_hh as their weight: the fused
    call that a state probe's one-call path runs (`engine/taps/fused.py`)."""
    wide = nn.LSTM(model.input_size + model.hidden_size, model.hidden_size, batch_first=model.batch_first)
    wide = wide.to(model.weight_hh_l0.device)
    with torch.no_grad():
        wide.weight_ih_l0.copy_(torch.cat([model.weight_ih_l0, model.weight_hh_l0], dim=1))
        for name in ("weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(wide, name).copy_(getattr(model, name))
    return wide


def widened_pass(wide: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """The one-call path's kernels alone: the widened layer over [x, u = 0], autograd.grad from the last output to u."""
    u = x.new_zeros(*x.shape[:2], wide.hidden_size).requires_grad_(True)
    y = wide(torch.cat([x, u], dim=-1))[0]
    return torch.autograd.grad(y[:, -1].sum(), u)[0]


def unrolled_state_grads(cell: nn.Module, x: torch.Tensor, measure: str = "hidden") -> tuple[torch.Tensor, ...]:
    """Every step's state gradient the brute-force way: an unrolled cell loop, autograd.grad w.r.t. each h_t (c_t)."""
    states = unrolled_states(cell, x)
    return torch.autograd.grad(states[-1][0].sum(), [state[measure == "cell"] for state in states])


def with_recording(check: Callable[[], object]) -> None:
    """Run `check` with an observer that does what the pytest plugin does with each profile: keep it as plain data."""
    records: list[dict[str, Any]] = []
    with observe(lambda profile, verdict: records.append({"profile": profile.to_dict(), "check": verdict})):
        check()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def size_label(hidden: int, seq_len: int, device: str = "cpu") -> str:
    return f"hidden {hidden}, seq {seq_len}" + ("" if device == "cpu" else f", {device}")


# -- the rows ----------------------------------------------------------------------------------------


def probe_rows(sizes: Sizes, device: str = "cpu") -> Iterator[Row]:
    """1. probe(measure="input") against a bare forward + autograd.grad w.r.t. the same batch."""
    for hidden, seq_len in (sizes.small, sizes.large):
        x = make_batch(sizes, seq_len, device)
        size = size_label(hidden, seq_len, device)
        for kind in MODELS:
            model = build(kind, sizes, hidden, device)
            ratio, base = paired(partial(probe, model, seq_len, inputs=x), partial(forward_grad, model, x), sizes)
            yield ratio_row(1, f"probe, {kind}", size, f"fwd + grad, {ms(base)}", ratio, 1.05)
        model = build("nn.LSTM", sizes, hidden, device)
        ratio, base = paired(partial(probe, model, seq_len), partial(forward_grad, model, x), sizes)
        label = "probe drawing its own inputs (the default call), nn.LSTM"
        yield ratio_row(1, label, size, f"fwd + grad, {ms(base)}", ratio, 1.05)
        ratio, base = paired(partial(floor_call, model, sizes, seq_len, device), partial(forward_grad, model, x), sizes)
        label = "the default call's floor: its guard, draws, fwd, grad and norms written out by hand, nn.LSTM"
        yield ratio_row(1, label, size, f"fwd + grad, {ms(base)}", ratio, None)


STATE_MEASURES = (("nn.RNN", "hidden"), ("nn.LSTM", "hidden"), ("nn.LSTM", "cell"), ("nn.GRU", "hidden"))


def state_rows(sizes: Sizes, device: str = "cpu") -> Iterator[Row]:
    """2. The state probes: against one fused pass, and every step also against an unrolled loop of cells."""
    for hidden, seq_len in (sizes.small, sizes.large):
        x = make_batch(sizes, seq_len, device)
        size = size_label(hidden, seq_len, device)
        for kind, measure in STATE_MEASURES:
            model = build(kind, sizes, hidden, device)
            loop = f"unrolled nn.{CELLS[type(model)].__name__} loop"
            baselines = [
                ("fused fwd + grad", partial(forward_grad, model, x), 1.50),
                (loop, partial(unrolled_state_grads, cell_of(model), x, measure), 1.0),
            ]
            checkpoints = [None, sizes.checkpoints] if (kind, measure) == ("nn.LSTM", "hidden") else [None]
            for k in checkpoints:
                candidate = partial(probe, model, seq_len, inputs=x, measure=measure, checkpoints=k)
                for baseline_name, baseline, limit in baselines if k is None else baselines[:1]:
                    ratio, base = paired(candidate, baseline, sizes)
                    what = "every step" if k is None else f"checkpoints={k}"
                    label = f'probe(measure="{measure}"), {what}, {kind}'
                    yield ratio_row(2, label, size, f"{baseline_name}, {ms(base)}", ratio, limit)
            if (kind, measure) == ("nn.LSTM", "cell"):  # what the cell state's one-call path cannot go below
                ratio, base = paired(partial(widened_pass, widened(model), x), baselines[0][1], sizes)
                label = "the one-call path's kernels alone: input wider by W_hh, fwd + grad, nn.LSTM"
                yield ratio_row(2, label, size, f"fused fwd + grad, {ms(base)}", ratio, None)


def check_rows(sizes: Sizes) -> Iterator[Row]:
    """3. The assertions and the plugin's recording around a probe, against the probe alone."""
    hidden, seq_len = sizes.small
    model = build("nn.LSTM", sizes, hidden)
    x = make_batch(sizes, seq_len)
    alone = partial(probe, model, seq_len, inputs=x)
    min_ratio = alone().ratio / 2  # thresholds that pass: the cost of a check is that of the usual, passing one
    checks = {
        "probe + recording": alone,
        "assert_no_vanishing + recording": partial(assert_no_vanishing, model, seq_len, min_ratio=min_ratio, inputs=x),
        "assert_no_exploding + recording": partial(assert_no_exploding, model, seq_len, inputs=x),
        "assert_finite_gradients + recording": partial(assert_finite_gradients, model, seq_len, inputs=x),
    }
    for label, check in checks.items():
        ratio, base = paired(partial(with_recording, check), alone, sizes)
        yield ratio_row(3, f"{label}, nn.LSTM", size_label(hidden, seq_len), f"probe alone, {ms(base)}", ratio, 1.05)


SUITE_CONFTEST = f"""\
import os
import sys


def pytest_collection_finish(session):
    loaded = [name for name in {HEAVY_MODULES!r} if name in sys.modules]
    with open(os.environ["GRADHEALTH_BENCH_MODULES"], "w") as report:
        report.write(" ".join(loaded))
"""


def write_suite(root: Path, sizes: Sizes) -> None:
    """A small suite that does not use the plugin, and a conftest that notes which heavy modules got imported."""
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "conftest.py").write_text(SUITE_CONFTEST)
    tests = "".join(f"\n\ndef test_{i}():\n    assert {i} == {i}\n" for i in range(sizes.suite_tests))
    for m in range(sizes.suite_modules):
        (root / f"test_module_{m}.py").write_text(f'"""Generated."""{tests}')


def collect(root: Path, plugin: bool) -> set[str]:
    """`pytest --collect-only -q` of the suite in a fresh interpreter; the heavy modules it had imported."""
    report = root / f"modules-{plugin}.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["GRADHEALTH_BENCH_MODULES"] = str(report)
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(root)]
    subprocess.run(
        [*command, *([] if plugin else ["-p", "no:gradhealth"])],
        cwd=root,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return set(report.read_text().split())


def startup_rows(sizes: Sizes) -> Iterator[Row]:
    """4. pytest start-up with the plugin installed against -p no:gradhealth, and what the plugin imports."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_suite(root, sizes)
        times = rounds([partial(collect, root, False), partial(collect, root, True)], 0.0, sizes.startup_runs, 1)
        added = collect(root, True) - collect(root, False)
    size = f"{sizes.suite_modules * sizes.suite_tests} tests"
    baseline = f"-p no:gradhealth, {ms(statistics.median(t[0] for t in times))}"
    yield ratio_row(4, "pytest --collect-only -q, plugin installed", size, baseline, median_ratio(times, 1, 0), 1.05)
    imported = ", ".join(sorted(added)) or "none"
    label = f"modules the plugin adds to that run ({', '.join(HEAVY_MODULES)})"
    yield Row(4, label, size, "-p no:gradhealth", imported, "none", "yes" if not added else "NO")


def memory_rows(sizes: Sizes) -> Iterator[Row]:
    """5. Peak memory of the probe against the bare forward and backward."""
    hidden, seq_len = sizes.large
    x = make_batch(sizes, seq_len)
    for kind in MODELS:
        model = build(kind, sizes, hidden)
        candidate, baseline = partial(probe, model, seq_len, inputs=x), partial(forward_grad, model, x)
        candidate(), baseline()  # lazy one-time allocations happen outside the measurement
        base = peak_bytes(baseline)
        ratio = peak_bytes(candidate) / base
        size = size_label(hidden, seq_len)
        yield ratio_row(5, f"peak memory, probe, {kind}", size, f"fwd + grad, {base / 2**20:.3g} MiB", ratio, 1.20)


def scaling_rows(sizes: Sizes) -> Iterator[Row]:
    """6. The probe's cost as the sequence grows 4x at a time (linear: a ratio near 4), beside the baseline's own."""
    hidden, lens = sizes.scaling_hidden, sizes.scaling_seq_lens
    model = build("nn.LSTM", sizes, hidden)
    batches = [make_batch(sizes, seq_len) for seq_len in lens]
    probes = [partial(probe, model, seq_len, inputs=x) for seq_len, x in zip(lens, batches, strict=True)]
    times = rounds([*probes, *(partial(forward_grad, model, x) for x in batches)], *sizes.budget)
    n = len(lens)
    for i in range(1, n):
        base = f"seq {lens[i - 1]}, {ms(statistics.median(t[i - 1] for t in times))}"
        label = f"probe time, seq {lens[i]} / seq {lens[i - 1]}, nn.LSTM"
        yield ratio_row(6, label, f"hidden {hidden}", base, median_ratio(times, i, i - 1), 4.40)
    label = f"fwd + grad time, seq {lens[-1]} / seq {lens[-2]}, nn.LSTM (the baseline's own growth)"
    yield ratio_row(6, label, f"hidden {hidden}", f"seq {lens[-2]}", median_ratio(times, 2 * n - 1, 2 * n - 2), None)


def cuda_rows(sizes: Sizes) -> Iterator[Row]:
    """7. Rows 1 and 2 with the models and batches on CUDA, where there is a device; a line saying so otherwise."""
    if not torch.cuda.is_available():
        yield Row(7, "rows 1 and 2 on CUDA", "-", "-", "skipped: torch.cuda.is_available() is False", "-", "-")
        return
    yield from probe_rows(sizes, "cuda")
    yield from state_rows(sizes, "cuda")


def seeds_rows(sizes: Sizes) -> Iterator[Row]:
    """8. seeds=8 on a module (the seeds' inputs batched into one pass) against one probe, and the loop of eight
    one-seed probes it replaces, for information."""
    hidden, seq_len = sizes.small
    model = build("nn.LSTM", sizes, hidden)
    one = partial(probe, model, seq_len, batch_size=sizes.batch)
    ratio, base = paired(partial(probe, model, seq_len, batch_size=sizes.batch, seeds=8), one, sizes)
    yield ratio_row(
        8,
        "probe(seeds=8), one batched pass, nn.LSTM",
        size_label(hidden, seq_len),
        f"one probe, {ms(base)}",
        ratio,
        3.5,
    )
    # The limit of one batched pass: the fused forward + grad of the eight seeds' batches side by side.
    pooled = torch.randn(8 * sizes.batch, seq_len, sizes.input_size, generator=torch.Generator().manual_seed(0))
    ratio, base = paired(partial(forward_grad, model, pooled), one, sizes)
    yield ratio_row(
        8,
        "bare fwd + grad of the eight batches side by side (the limit), nn.LSTM",
        size_label(hidden, seq_len),
        f"one probe, {ms(base)}",
        ratio,
        None,
    )
    loop = lambda: [probe(model, seq_len, batch_size=sizes.batch, seed=seed) for seed in range(8)]  # noqa: E731
    ratio, base = paired(loop, one, sizes)
    yield ratio_row(
        8,
        "eight one-seed probes in a loop, nn.LSTM",
        size_label(hidden, seq_len),
        f"one probe, {ms(base)}",
        ratio,
        None,
    )


SECTIONS = (probe_rows, state_rows, check_rows, startup_rows, memory_rows, scaling_rows, cuda_rows, seeds_rows)


# -- the report --------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and single repeats: a smoke run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--rows", default="1,2,3,4,5,6,7,8", help="the groups of rows to run, e.g. 1,6")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="time calls by wall time or the process's CPU time"
    )
    args = parser.parse_args()
    global clock
    clock = cpu_time if args.clock == "cpu" else time.perf_counter
    groups = {int(group) for group in args.rows.split(",")}
    sizes = QUICK if args.quick else DEFAULT
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print("# pytest-gradhealth benchmarks\n")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()}")
    threads = f"{torch.get_num_threads()} threads (torch.set_num_threads)"
    print(f"- torch {torch.__version__}, {threads}; Python {platform.python_version()}")
    print(f"- command: python benchmarks/run.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"- batch {sizes.batch}, input size {sizes.input_size}; each ratio is the median over rounds of candidate")
    print("  over baseline, a round running both back to back after a warm-up")
    print(f"- clock: {'CPU time of the process and its children (getrusage)' if args.clock == 'cpu' else 'wall'}")
    tuned = [f"{key}={value}" for key, value in sorted(os.environ.items()) if key.startswith("MALLOC_")]
    if tuned:
        print(f"- glibc malloc tuned: {' '.join(tuned)}")
    if args.quick:
        print("- --quick: tiny sizes, single repeats; the ratios and verdicts below mean nothing")
    print()
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("---" for _ in HEADER) + "|")
    for group, section in enumerate(SECTIONS, start=1):
        for row in section(sizes) if group in groups else ():
            print(row.markdown(), flush=True)
    print(f"\ntotal: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
